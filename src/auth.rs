//! Bearer-token authentication: where the tokens come from, how they are kept, and the check on each request.
//!
//! With `AUTH_REQUIRED=true` every path except [`PUBLIC_PATHS`] needs
//! `Authorization: Bearer <token>`. The tokens come from exactly one place, in
//! this order: `API_TOKEN` (several separated by commas), `API_TOKEN_FILE`
//! (one per line), or the systemd credential `api-token`
//! (`$CREDENTIALS_DIRECTORY/api-token`, also one per line). Several tokens
//! exist for rotation: add the new token, move the clients over, remove the old.
//!
//! A token value never leaves this module in readable form: [`Tokens`]'
//! `Debug` prints only a count, errors name the variable or file and the
//! token's position, and a request's token is compared in constant time
//! against every configured token, without stopping at the first match.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use subtle::{Choice, ConstantTimeEq};

use crate::settings::{ConfigError, Environment, Variable, open_regular_file, parse_bool};

const AUTH_REQUIRED: Variable = Variable::new(
    "AUTH_REQUIRED",
    "false",
    "require a bearer token on every route but `/health` and `/ready`",
);
const API_TOKEN: Variable =
    Variable::unset("API_TOKEN", "accepted bearer token(s), comma-separated");
const API_TOKEN_FILE: Variable =
    Variable::unset("API_TOKEN_FILE", "a file of accepted tokens, one per line");
/// A protocol variable (systemd's, never prefixed, never from `.env`),
/// documented with ours because it is where the `api-token` credential is.
const CREDENTIALS_DIRECTORY: Variable = Variable::unset(
    "CREDENTIALS_DIRECTORY",
    "set by systemd: where the `api-token` credential is read",
);

/// A secret's value (`API_TOKEN`, `Server::api_tokens`): `Debug` shows
/// `<redacted>`, never the value.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub(crate) fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value, for the code that needs it (token parsing).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The realm named in `WWW-Authenticate` challenges.
pub(crate) const REALM: &str = "portkeeper";

/// The systemd credential (`LoadCredential=api-token:...`) read when neither
/// `API_TOKEN` nor `API_TOKEN_FILE` is set.
pub(crate) const CREDENTIAL_NAME: &str = "api-token";

/// Paths answered without a token, so that health checks need no secret.
pub(crate) const PUBLIC_PATHS: &[&str] = &["/health", "/ready"];

/// The shortest token accepted: 16 characters of a random token are ~96 bits.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// The longest token accepted. The bound lets every comparison run over the
/// same fixed number of bytes, so its time says nothing about the length.
pub(crate) const MAX_TOKEN_LEN: usize = 512;

/// A token file larger than this is not a token file.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// What is expected of a token, for error messages.
const TOKEN_SYNTAX: &str =
    "16 to 512 characters of A-Z a-z 0-9 - . _ ~ + / with optional trailing =";

/// One configured token, padded to [`MAX_TOKEN_LEN`] so comparisons take the same time.
struct Token {
    padded: Box<[u8; MAX_TOKEN_LEN]>,
    len: u64,
}

impl Token {
    /// Pads `bytes` (truncated to [`MAX_TOKEN_LEN`]; the length still tells them apart).
    fn new(bytes: &[u8]) -> Self {
        let mut padded = Box::new([0u8; MAX_TOKEN_LEN]);
        let kept = bytes.len().min(MAX_TOKEN_LEN);
        padded[..kept].copy_from_slice(&bytes[..kept]);
        Token {
            padded,
            len: bytes.len() as u64,
        }
    }

    fn ct_matches(&self, other: &Token) -> Choice {
        self.padded[..].ct_eq(&other.padded[..]) & self.len.ct_eq(&other.len)
    }
}

/// The accepted tokens. Cheap to clone; `Debug` shows only how many there are.
#[derive(Clone)]
pub(crate) struct Tokens(Arc<[Token]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens(<{} redacted>)", self.0.len())
    }
}

impl Tokens {
    /// How many tokens are accepted.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `presented` is one of the tokens. Every token is compared, in
    /// full, whatever matches: the time taken depends only on how many tokens
    /// there are.
    pub(crate) fn accepts(&self, presented: &[u8]) -> bool {
        let presented = Token::new(presented);
        let mut any = Choice::from(0);
        for token in self.0.iter() {
            any |= token.ct_matches(&presented);
        }
        any.into()
    }
}

/// Whether requests need a token.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `AUTH_REQUIRED=false`: every route is open.
    Open,
    /// `AUTH_REQUIRED=true`: every route but [`PUBLIC_PATHS`] needs one of these tokens.
    Bearer {
        /// The accepted tokens.
        tokens: Tokens,
        /// Where they came from, for the start-up log.
        origin: Origin,
    },
}

impl Auth {
    /// Authentication's variables, in the order of the documentation.
    pub(crate) const VARIABLES: &'static [Variable] = &[
        AUTH_REQUIRED,
        API_TOKEN,
        API_TOKEN_FILE,
        CREDENTIALS_DIRECTORY,
    ];

    /// Reads `AUTH_REQUIRED` and the tokens' source, and loads the tokens
    /// (reading a token file or the credential if that is where they are).
    pub(crate) fn from_env(env: &Environment) -> Result<Self, ConfigError> {
        let required = env.setting(&AUTH_REQUIRED)?.parse(parse_bool)?;
        let api_token = env.setting(&API_TOKEN)?;
        let api_token_file = env.setting(&API_TOKEN_FILE)?;
        Ok(load(TokenSettings {
            prefix: env.prefix(),
            required,
            api_token: api_token.value,
            api_token_file: api_token_file.value,
            credentials_directory: env.protocol(CREDENTIALS_DIRECTORY.name),
        })?)
    }

    /// Requires one of `tokens` (a typed setter's, named `setter` in
    /// errors), with the same rules as `API_TOKEN`.
    pub(crate) fn from_tokens(setter: &str, tokens: &[Secret]) -> Result<Self, ConfigError> {
        if tokens.is_empty() {
            return Err(TokenError::Empty {
                name: setter.to_owned(),
                place: "the list".to_owned(),
                separated: "at least one",
            }
            .into());
        }
        let parsed = tokens
            .iter()
            .enumerate()
            .map(|(index, token)| {
                check_syntax(token.expose())
                    .map(|()| Token::new(token.expose().as_bytes()))
                    .map_err(|problem| TokenError::Malformed {
                        name: setter.to_owned(),
                        place: "the list".to_owned(),
                        position: index + 1,
                        problem,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Auth::Bearer {
            tokens: Tokens(parsed.into()),
            origin: Origin::Code,
        })
    }
}

impl From<TokenError> for ConfigError {
    fn from(err: TokenError) -> Self {
        ConfigError::Owner(Box::new(err))
    }
}

#[cfg(test)]
impl Auth {
    /// Whether a token is required.
    pub(crate) fn is_required(&self) -> bool {
        matches!(self, Auth::Bearer { .. })
    }
}

/// Where the tokens were read from. Holds paths, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The `API_TOKEN` variable.
    Variable,
    /// The file named by `API_TOKEN_FILE`.
    File(PathBuf),
    /// The systemd credential `api-token`.
    Credential(PathBuf),
    /// `Server::api_tokens`, in the program's code.
    Code,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Variable => f.write_str("API_TOKEN"),
            Origin::File(path) => write!(f, "API_TOKEN_FILE ({})", path.display()),
            Origin::Credential(path) => write!(f, "credential {}", path.display()),
            Origin::Code => f.write_str("Server::api_tokens"),
        }
    }
}

/// The raw token settings, as `config` found them.
#[derive(Clone, Copy, Default)]
pub(crate) struct TokenSettings<'a> {
    /// The prefix of our variables' names (`Server::from_env_prefixed`), for errors.
    pub(crate) prefix: &'a str,
    /// `AUTH_REQUIRED`, already parsed.
    pub(crate) required: bool,
    /// `API_TOKEN`, as given.
    pub(crate) api_token: Option<&'a str>,
    /// `API_TOKEN_FILE`, as given.
    pub(crate) api_token_file: Option<&'a str>,
    /// `CREDENTIALS_DIRECTORY`, set by systemd when the unit has credentials.
    pub(crate) credentials_directory: Option<&'a str>,
}

/// A token setting that cannot be used. The message never contains a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TokenError {
    /// `AUTH_REQUIRED=true` and no source of tokens.
    #[error(
        "{p}AUTH_REQUIRED: \"true\" but no token is configured (set {p}API_TOKEN, {p}API_TOKEN_FILE, or the systemd credential {CREDENTIAL_NAME})"
    )]
    Missing {
        /// The prefix of our variables' names.
        p: String,
    },
    /// `AUTH_REQUIRED=true`, no variable, and systemd's credential file is not there.
    #[error(
        "{p}AUTH_REQUIRED: \"true\" but no token is configured: CREDENTIALS_DIRECTORY names {path}, which does not exist (set {p}API_TOKEN or {p}API_TOKEN_FILE, or add LoadCredential={CREDENTIAL_NAME}:... to the unit)"
    )]
    CredentialMissing {
        /// The prefix of our variables' names.
        p: String,
        /// The credential's path that was looked at.
        path: String,
    },
    /// Both variables are set: which one wins would be a guess.
    #[error(
        "{p}API_TOKEN and {p}API_TOKEN_FILE are both set (expected one of them; put every token in one place)"
    )]
    Conflict {
        /// The prefix of our variables' names.
        p: String,
    },
    /// A token is configured but not required: the user expects protection
    /// that would not be there.
    #[error(
        "{name}: a token is set but {p}AUTH_REQUIRED is false (set {p}AUTH_REQUIRED=true to require it, or remove {name})"
    )]
    NotRequired {
        /// The prefix of our variables' names.
        p: String,
        /// `API_TOKEN` or `API_TOKEN_FILE`, as spelled.
        name: String,
    },
    /// A token file cannot be read.
    #[error("{name}: cannot read {path} (expected a readable file of tokens, one per line)")]
    Unreadable {
        /// `API_TOKEN_FILE` (as spelled) or `CREDENTIALS_DIRECTORY`.
        name: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token file is far too large to be one.
    #[error(
        "{name}: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes (expected a small file of tokens, one per line)"
    )]
    TooLarge {
        /// `API_TOKEN_FILE` (as spelled) or `CREDENTIALS_DIRECTORY`.
        name: String,
        /// The file.
        path: String,
    },
    /// The source holds no token at all.
    #[error("{name}: {place} holds no token (expected {TOKEN_SYNTAX}, {separated})")]
    Empty {
        /// The variable as spelled, or the setter.
        name: String,
        /// The quoted empty value, or the file.
        place: String,
        /// How several tokens are separated there.
        separated: &'static str,
    },
    /// One token is malformed; named by position, never by value.
    #[error(
        "{name}: token {position} in {place} is not valid: {problem} (expected {TOKEN_SYNTAX})"
    )]
    Malformed {
        /// The variable as spelled, or the setter.
        name: String,
        /// The variable's value described without its content, or the file.
        place: String,
        /// 1-based position among the tokens (lines for files).
        position: usize,
        /// What is wrong, without the value.
        problem: &'static str,
    },
}

/// How several tokens are written in one place.
#[derive(Clone, Copy)]
enum Layout {
    /// `API_TOKEN=a,b`
    Commas,
    /// A file: one per line, blank lines and `#` comments ignored.
    Lines,
}

impl Layout {
    fn describe(self) -> &'static str {
        match self {
            Layout::Commas => "several separated by commas",
            Layout::Lines => "one per line",
        }
    }
}

/// Decides whether requests need a token and loads the tokens, reading a
/// token file or the systemd credential if that is where they are.
pub(crate) fn load(settings: TokenSettings<'_>) -> Result<Auth, TokenError> {
    let TokenSettings {
        prefix,
        required,
        api_token,
        api_token_file,
        credentials_directory,
    } = settings;
    if api_token.is_some() && api_token_file.is_some() {
        return Err(TokenError::Conflict {
            p: prefix.to_owned(),
        });
    }
    if !required {
        if api_token.is_some() {
            return Err(TokenError::NotRequired {
                p: prefix.to_owned(),
                name: format!("{prefix}API_TOKEN"),
            });
        }
        if api_token_file.is_some() {
            return Err(TokenError::NotRequired {
                p: prefix.to_owned(),
                name: format!("{prefix}API_TOKEN_FILE"),
            });
        }
        // A credential may be provisioned for every host while only some
        // require it; that is deployment, not a contradiction.
        return Ok(Auth::Open);
    }
    let (tokens, origin) = if let Some(value) = api_token {
        let place = if value.trim().is_empty() {
            format!("{value:?}")
        } else {
            "the value".to_owned()
        };
        let tokens = parse(&format!("{prefix}API_TOKEN"), &place, value, Layout::Commas)?;
        (tokens, Origin::Variable)
    } else if let Some(path) = api_token_file {
        let path = PathBuf::from(path);
        let tokens = parse_token_file(&format!("{prefix}API_TOKEN_FILE"), &path)?;
        (tokens, Origin::File(path))
    } else if let Some(path) = credential_path(credentials_directory) {
        let tokens = match parse_token_file("CREDENTIALS_DIRECTORY", &path) {
            Err(TokenError::Unreadable { source, path, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(TokenError::CredentialMissing {
                    p: prefix.to_owned(),
                    path,
                });
            }
            tokens => tokens?,
        };
        (tokens, Origin::Credential(path))
    } else {
        return Err(TokenError::Missing {
            p: prefix.to_owned(),
        });
    };
    Ok(Auth::Bearer {
        tokens: Tokens(tokens.into()),
        origin,
    })
}

fn credential_path(directory: Option<&str>) -> Option<PathBuf> {
    directory
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(CREDENTIAL_NAME))
}

/// Reads a file of tokens (one per line) and parses it; errors name `name` and the path.
fn parse_token_file(name: &str, path: &Path) -> Result<Vec<Token>, TokenError> {
    let text = read_token_file(name, path)?;
    parse(name, &path.display().to_string(), &text, Layout::Lines)
}

fn read_token_file(name: &str, path: &Path) -> Result<String, TokenError> {
    let unreadable = |source| TokenError::Unreadable {
        name: name.to_owned(),
        path: path.display().to_string(),
        source,
    };
    // A regular file only: a FIFO would hang the start, a device never ends.
    let file = open_regular_file(path).map_err(unreadable)?;
    let mut text = String::new();
    // Read one byte past the bound to tell "exactly at the limit" from "beyond".
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(TokenError::TooLarge {
            name: name.to_owned(),
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

fn parse(name: &str, place: &str, text: &str, layout: Layout) -> Result<Vec<Token>, TokenError> {
    let entries: Vec<(usize, &str)> = match layout {
        Layout::Commas => text.split(',').map(str::trim).enumerate().collect(),
        Layout::Lines => text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .collect(),
    };
    if entries.iter().all(|(_, entry)| entry.is_empty()) {
        return Err(TokenError::Empty {
            name: name.to_owned(),
            place: place.to_owned(),
            separated: layout.describe(),
        });
    }
    entries
        .into_iter()
        .map(|(index, entry)| {
            check_syntax(entry)
                .map(|()| Token::new(entry.as_bytes()))
                .map_err(|problem| TokenError::Malformed {
                    name: name.to_owned(),
                    place: place.to_owned(),
                    position: index + 1,
                    problem,
                })
        })
        .collect()
}

/// RFC 6750's `b64token`, and our length bounds. Returns what is wrong
/// without quoting the value.
fn check_syntax(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("it is empty");
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err("it is too short");
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err("it is too long");
    }
    let body = token.trim_end_matches('=');
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    if body.is_empty() || !body.bytes().all(allowed) {
        return Err("it has a character a bearer token cannot carry");
    }
    Ok(())
}

/// What a request's `Authorization` header amounts to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// No bearer credentials at all (RFC 6750 §3.1: no error code then).
    Missing,
    /// Bearer credentials that are not a configured token.
    Invalid,
}

fn verdict(headers: &HeaderMap, tokens: &Tokens) -> Verdict {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // None, or several: a client sending two credentials is confused or probing.
        return if headers.contains_key(header::AUTHORIZATION) {
            Verdict::Invalid
        } else {
            Verdict::Missing
        };
    };
    let bytes = value.as_bytes();
    let Some((scheme, rest)) = split_scheme(bytes) else {
        return Verdict::Missing;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Basic or another scheme: no bearer credentials were offered.
        return Verdict::Missing;
    }
    let presented = rest.trim_ascii();
    if tokens.accepts(presented) {
        Verdict::Allowed
    } else {
        Verdict::Invalid
    }
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let value = value.trim_ascii_start();
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

/// Logs, once at start, whether tokens are required and where they came from
/// (how many, never which).
pub(crate) fn log_policy(auth: &Auth) {
    match auth {
        Auth::Open => tracing::debug!("AUTH_REQUIRED=false: every route is open"),
        Auth::Bearer { tokens, origin } => tracing::info!(
            tokens = tokens.len(),
            from = %origin,
            public = %format!("the built-in {} (under builtin_routes_at's prefix when moved)", PUBLIC_PATHS.join(" and ")),
            "bearer token required on every other route"
        ),
    }
}

/// Adds the token check to `router` when `auth` requires one; the `public`
/// paths (the built-in health check, wherever it is mounted) need no token.
pub(crate) fn protect(router: Router, auth: &Auth, public: Vec<String>) -> Router {
    match auth {
        Auth::Open => router,
        Auth::Bearer { tokens, .. } => router.layer(axum::middleware::from_fn_with_state(
            Guard {
                tokens: tokens.clone(),
                public: public.into(),
            },
            require_bearer,
        )),
    }
}

/// What the token check needs on each request.
#[derive(Clone)]
struct Guard {
    tokens: Tokens,
    public: Arc<[String]>,
}

async fn require_bearer(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if guard.public.iter().any(|public| public == path) {
        return next.run(request).await;
    }
    let tokens = &guard.tokens;
    match verdict(request.headers(), tokens) {
        Verdict::Allowed => next.run(request).await,
        refused => {
            // The path and the verdict only: the header may hold a real token
            // sent to the wrong server, and must not reach the logs.
            tracing::debug!(path = request.uri().path(), verdict = ?refused, "request refused");
            unauthorized(&refused)
        }
    }
}

fn unauthorized(verdict: &Verdict) -> Response {
    let (challenge, error, message) = match verdict {
        Verdict::Invalid => (
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"the token is not valid\""
            ),
            "invalid_token",
            "the bearer token is not valid (check the token, or whether it was rotated)",
        ),
        _ => (
            format!("Bearer realm=\"{REALM}\""),
            "unauthorized",
            "this route needs a bearer token (send Authorization: Bearer <token>)",
        ),
    };
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": error, "message": message })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "s3cret-token-0123456789";
    const NEXT: &str = "next-token_abcdefghij==";

    fn settings(token: Option<&'static str>) -> TokenSettings<'static> {
        TokenSettings {
            required: true,
            api_token: token,
            ..TokenSettings::default()
        }
    }

    fn tokens(value: &'static str) -> Tokens {
        match load(settings(Some(value))).unwrap() {
            Auth::Bearer { tokens, .. } => tokens,
            Auth::Open => panic!("a token was required"),
        }
    }

    #[test]
    fn every_rotated_token_is_accepted_and_nothing_else() {
        let set = tokens(format!(" {GOOD} , {NEXT} ").leak());
        assert_eq!(set.len(), 2);
        assert!(set.accepts(GOOD.as_bytes()));
        assert!(set.accepts(NEXT.as_bytes()));
        assert!(!set.accepts(b""));
        assert!(!set.accepts(&GOOD.as_bytes()[..GOOD.len() - 1]));
        assert!(!set.accepts(format!("{GOOD}x").as_bytes()));
        // Equal in the first MAX_TOKEN_LEN bytes, longer: the length decides.
        let long = "a".repeat(MAX_TOKEN_LEN);
        let longer = format!("{long}a");
        assert!(tokens(long.clone().leak()).accepts(long.as_bytes()));
        assert!(!tokens(long.leak()).accepts(longer.as_bytes()));
    }

    #[test]
    fn debug_and_errors_never_show_a_token() {
        let set = tokens(format!("{GOOD},{NEXT}").leak());
        let shown = format!("{set:?}");
        assert_eq!(shown, "Tokens(<2 redacted>)");
        let bad = load(settings(Some("zq9xw,s3cret-token-0123456789"))).unwrap_err();
        let message = bad.to_string();
        assert!(message.starts_with("API_TOKEN: token 1"), "{message}");
        assert!(
            !message.contains("zq9xw") && !message.contains(GOOD),
            "{message}"
        );
        let bad = load(settings(Some("s3cret token 0123456789"))).unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }

    #[test]
    fn settings_that_contradict_or_lack_a_token_are_refused() {
        assert!(matches!(
            load(settings(None)),
            Err(TokenError::Missing { .. })
        ));
        let both = TokenSettings {
            api_token_file: Some("/etc/tokens"),
            ..settings(Some(GOOD))
        };
        assert!(matches!(load(both), Err(TokenError::Conflict { .. })));
        let unrequired = TokenSettings {
            required: false,
            ..settings(Some(GOOD))
        };
        assert!(matches!(
            load(unrequired),
            Err(TokenError::NotRequired { name, .. }) if name == "API_TOKEN"
        ));
        assert!(matches!(
            load(settings(Some(" , "))),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(load(TokenSettings::default()), Ok(Auth::Open)));
    }

    #[test]
    fn prefixed_errors_name_the_prefixed_variables() {
        let env = Environment::with_prefix(
            "APP_",
            [("APP_AUTH_REQUIRED".to_owned(), "true".to_owned())],
            [],
        );
        assert_eq!(
            Auth::from_env(&env).unwrap_err().to_string(),
            "APP_AUTH_REQUIRED: \"true\" but no token is configured (set APP_API_TOKEN, APP_API_TOKEN_FILE, or the systemd credential api-token)"
        );
        let env =
            Environment::with_prefix("APP_", [("APP_API_TOKEN".to_owned(), GOOD.to_owned())], []);
        let message = Auth::from_env(&env).unwrap_err().to_string();
        assert!(
            message.starts_with("APP_API_TOKEN: a token is set but APP_AUTH_REQUIRED is false"),
            "{message}"
        );
    }

    #[test]
    fn typed_tokens_follow_the_rules_of_api_token() {
        let good = [Secret::new(GOOD.to_owned()), Secret::new(NEXT.to_owned())];
        match Auth::from_tokens("api_tokens", &good).unwrap() {
            Auth::Bearer { tokens, origin } => {
                assert!(tokens.accepts(NEXT.as_bytes()));
                assert_eq!(origin, Origin::Code);
            }
            Auth::Open => panic!("tokens were given"),
        }
        let short = [Secret::new("short".to_owned())];
        let message = Auth::from_tokens("api_tokens", &short)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("api_tokens: token 1 in the list is not valid: it is too short"),
            "{message}"
        );
        assert!(!message.contains("short\""), "{message}");
        assert!(
            Auth::from_tokens("api_tokens", &[])
                .unwrap_err()
                .to_string()
                .starts_with("api_tokens: the list holds no token")
        );
    }

    #[test]
    fn token_syntax_is_rfc_6750_b64token() {
        assert!(check_syntax("abcdefghijklmnop").is_ok());
        assert!(check_syntax("abc+/._~-0123456789==").is_ok());
        assert!(check_syntax("abcdefghijklmno").is_err(), "15 characters");
        assert!(check_syntax("abcdefgh=ijklmnop").is_err(), "= inside");
        assert!(check_syntax("abcdefgh ijklmnop").is_err(), "space");
        assert!(check_syntax("================").is_err(), "only padding");
        assert!(check_syntax("abcdéfghijklmnopq").is_err(), "not ASCII");
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(header::AUTHORIZATION, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn authorization_headers_are_judged() {
        let set = tokens(GOOD);
        let judge = |values: &[&str]| verdict(&headers(values), &set);
        assert_eq!(judge(&[&format!("Bearer {GOOD}")]), Verdict::Allowed);
        assert_eq!(judge(&[&format!("bearer   {GOOD} ")]), Verdict::Allowed);
        assert_eq!(judge(&[]), Verdict::Missing);
        assert_eq!(judge(&["Basic dXNlcjpwYXNz"]), Verdict::Missing);
        assert_eq!(judge(&["Bearer"]), Verdict::Missing);
        assert_eq!(judge(&["Bearer wrong-token-0123456789"]), Verdict::Invalid);
        assert_eq!(
            judge(&[&format!("Bearer {GOOD}"), "Bearer other"]),
            Verdict::Invalid
        );
    }
}
