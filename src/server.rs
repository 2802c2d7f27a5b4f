//! The public entry points: [`run`](crate::run), the [`Server`] builder, and [`Listening`].

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;

use crate::auth::{self, Secret};
use crate::config::{Bind, Config, Overrides};
use crate::error::Error;
use crate::lifecycle::{self, Supervision};
use crate::listener::{self, Listener};
use crate::routes::Builtins;
use crate::settings::{ConfigError, Environment, protocol_var, real_protocol_vars};
use crate::upgrade::{self, Succession};
use crate::{logging, startup};

/// A future that ends the serving when it completes, like a stop signal.
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// `.env` in the working directory, then the process environment on top.
    Environment,
    /// The given variables only.
    Vars(Vec<(String, String)>),
}

/// Serves an axum app the portkeeper way, with a few knobs.
///
/// [`run`](crate::run) is `Server::from_env().run(app)`. Use the builder to
/// take the configuration from somewhere else, to move or turn off the
/// built-in routes (`/health`, `/ready`, `/metrics`, `/info`), or to stop on a signal of your own.
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// fn main() -> std::process::ExitCode {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     portkeeper::Server::from_vars([("API_PORT", "8080"), ("HOST", "127.0.0.1")])
///         .builtin_routes_at("/_portkeeper")
///         .with_graceful_shutdown(async {
///             // Any future: here, stop after an hour.
///             tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
///         })
///         .run(app)
/// }
/// ```
pub struct Server {
    source: ConfigSource,
    builtins: Builtins,
    shutdown: Option<ShutdownSignal>,
    /// `from_env_prefixed`'s prefix (checked at `listen`).
    prefix: Option<String>,
    /// Read `.env` (for the environment sources).
    dotenv: bool,
    /// Install the global tracing subscriber.
    logging: bool,
    /// The typed settings, applied over the environment's.
    overrides: Overrides,
    effects: Effects,
}

/// The process-wide effects a host program may turn off.
#[derive(Debug, Clone, Copy)]
struct Effects {
    /// SIGTERM and SIGINT handlers while serving.
    signals: bool,
    /// SIGUSR2 and SIGHUP handlers, and re-executing the program on upgrade.
    upgrades: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("source", &self.source)
            .field("builtins", &self.builtins)
            .field("shutdown", &self.shutdown.as_ref().map(|_| "user future"))
            .field("effects", &self.effects)
            .field("prefix", &self.prefix)
            .field("dotenv", &self.dotenv)
            .field("logging", &self.logging)
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl Server {
    /// Configuration from the environment, with a `.env` file in the working
    /// directory underneath (real variables win): the variables of
    /// `config.example.env`.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env();
    /// # let _ = server;
    /// ```
    pub fn from_env() -> Self {
        Server {
            source: ConfigSource::Environment,
            builtins: Builtins::At(String::new()),
            shutdown: None,
            effects: Effects {
                signals: true,
                upgrades: true,
            },
            prefix: None,
            dotenv: true,
            logging: true,
            overrides: Overrides::default(),
        }
    }

    /// As [`Server::from_env`], but every variable carries `prefix`: with
    /// `"APP_"`, `APP_HOST`, `APP_API_PORT`, ... are read (from `.env` and
    /// the environment alike), and a bare `HOST` or `DEBUG` is left to the
    /// program that embeds portkeeper. The process protocols (`LISTEN_FDS`,
    /// `NOTIFY_SOCKET`, `WATCHDOG_*`, `JOURNAL_STREAM`,
    /// `CREDENTIALS_DIRECTORY`) are never prefixed. Errors name the variable
    /// as spelled (`APP_API_PORT: "x" is not valid ...`).
    ///
    /// The prefix is capital letters, digits and underscores, not empty;
    /// anything else is refused by [`Server::listen`] (exit 78).
    ///
    /// ```no_run
    /// // Reads APP_HOST, APP_API_PORT, APP_LOG_LEVEL, ...
    /// let server = portkeeper::Server::from_env_prefixed("APP_");
    /// # let _ = server;
    /// ```
    pub fn from_env_prefixed(prefix: &str) -> Self {
        Server {
            prefix: Some(prefix.to_owned()),
            ..Server::from_env()
        }
    }

    /// Configuration from these variables only (no `.env`, no environment),
    /// by the same names and rules as the environment: `API_PORT`, `HOST`, ...
    ///
    /// The process protocols still come from the real environment: sockets
    /// handed over by systemd or systemfd (`LISTEN_FDS`), `NOTIFY_SOCKET`, the
    /// watchdog, systemd's `CREDENTIALS_DIRECTORY`.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_vars([("API_PORT", "0"), ("HOST", "127.0.0.1")]);
    /// # let _ = server;
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Server {
            source: ConfigSource::Vars(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            ..Server::from_env()
        }
    }

    /// Whether to read `.env` in the working directory (default: true for
    /// [`Server::from_env`] and [`Server::from_env_prefixed`];
    /// [`Server::from_vars`] never reads it). `false`: the file is not opened at all.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env_prefixed("APP_").dotenv(false);
    /// # let _ = server;
    /// ```
    pub fn dotenv(mut self, read: bool) -> Self {
        self.dotenv = read;
        self
    }

    /// Whether to install portkeeper's global tracing subscriber (journald or
    /// stderr, by `LOG_LEVEL`, `LOG_FORMAT`, `RUST_LOG`); default true.
    /// `false` leaves logging to the program: portkeeper's events go to
    /// whatever subscriber it installs, and none is installed otherwise.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().logging(false);
    /// # let _ = server;
    /// ```
    pub fn logging(mut self, install: bool) -> Self {
        self.logging = install;
        self
    }

    /// Time in-flight requests get after a stop begins, in place of
    /// `SHUTDOWN_TIMEOUT` (0 to 86400 s, else refused by [`Server::listen`]).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let server = portkeeper::Server::from_env().shutdown_timeout(Duration::from_secs(10));
    /// # let _ = server;
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.shutdown_timeout = Some(timeout);
        self
    }

    /// Time to keep serving, `/ready` at 503, between a stop signal and the
    /// drain, in place of `SHUTDOWN_DELAY` (0 to 86400 s).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let server = portkeeper::Server::from_env().shutdown_delay(Duration::from_secs(5));
    /// # let _ = server;
    /// ```
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.overrides.shutdown_delay = Some(delay);
        self
    }

    /// Time a client gets to send a request's headers (and an idle
    /// connection its next request), in place of `HEADER_READ_TIMEOUT` (1 to 3600 s).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let server = portkeeper::Server::from_env().header_read_timeout(Duration::from_secs(5));
    /// # let _ = server;
    /// ```
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.header_read_timeout = Some(timeout);
        self
    }

    /// Time from a request's headers to its response (503 after), in place
    /// of `REQUEST_TIMEOUT` (1 to 3600 s).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let server = portkeeper::Server::from_env().request_timeout(Duration::from_secs(60));
    /// # let _ = server;
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.request_timeout = Some(timeout);
        self
    }

    /// Time a connection with output waiting may go without writing any of
    /// it (a client that stops reading, an HTTP/2 window never opened), in
    /// place of `WRITE_TIMEOUT` (1 to 3600 s); it is closed after.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let server = portkeeper::Server::from_env().write_timeout(Duration::from_secs(10));
    /// # let _ = server;
    /// ```
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.write_timeout = Some(timeout);
        self
    }

    /// Open connections at most, over every listener, in place of
    /// `MAX_CONNECTIONS` (0: no limit; at most 1,000,000). At the cap new
    /// connections wait in the kernel's queue.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().max_connections(2_000);
    /// # let _ = server;
    /// ```
    pub fn max_connections(mut self, cap: usize) -> Self {
        self.overrides.max_connections = Some(cap);
        self
    }

    /// The largest request body accepted (413 above), in place of
    /// `MAX_BODY_BYTES` (0 to 1 GiB).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().max_body_bytes(8 * 1024 * 1024);
    /// # let _ = server;
    /// ```
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.overrides.max_body_bytes = Some(bytes);
        self
    }

    /// Binds this TCP address when nothing is inherited, in place of `HOST`
    /// and `API_PORT` (and `LISTEN`); port 0 is any free port. A search
    /// (`AUTO_FIND_PORT`, [`Server::auto_find_port`]) still starts from it.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().bind(([127, 0, 0, 1], 8080).into());
    /// # let _ = server;
    /// ```
    pub fn bind(mut self, address: SocketAddr) -> Self {
        self.overrides.bind = Some(Bind::One(address));
        self
    }

    /// Binds every one of these TCP addresses when nothing is inherited, in
    /// place of `LISTEN` (and `HOST`, `API_PORT`); at least one, else
    /// refused by [`Server::listen`].
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// let addresses: [SocketAddr; 2] = ["127.0.0.1:8080".parse().unwrap(), "[::1]:8080".parse().unwrap()];
    /// let server = portkeeper::Server::from_env().bind_all(addresses);
    /// # let _ = server;
    /// ```
    pub fn bind_all(mut self, addresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.overrides.bind = Some(Bind::All(addresses.into_iter().collect()));
        self
    }

    /// When the first port is busy, searches `ports` in order, in place of
    /// `AUTO_FIND_PORT=true` with `PORT_RANGE_START` and `PORT_RANGE_END`
    /// (1 to 65535, start not above end).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().auto_find_port(8000..=8100);
    /// # let _ = server;
    /// ```
    pub fn auto_find_port(mut self, ports: RangeInclusive<u16>) -> Self {
        self.overrides.auto_find_port = Some(ports);
        self
    }

    /// Requires `Authorization: Bearer <token>` with one of `tokens` on every
    /// route but `/health` and `/ready`, in place of `AUTH_REQUIRED`,
    /// `API_TOKEN` and `API_TOKEN_FILE`. The rules are `API_TOKEN`'s: 16 to
    /// 512 characters of a bearer token's alphabet, at least one token; a
    /// token is never logged or shown in errors.
    ///
    /// ```no_run
    /// let token = std::fs::read_to_string("/run/secrets/token").expect("a token file");
    /// let server = portkeeper::Server::from_env().api_tokens([token.trim()]);
    /// # let _ = server;
    /// ```
    pub fn api_tokens(mut self, tokens: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let tokens = tokens.into_iter().map(|t| Secret::new(t.into()));
        self.overrides.api_tokens = Some(tokens.collect());
        self
    }

    /// Serves TLS on the listeners that carry no mark of their own
    /// (`HOST:API_PORT`, [`Server::bind`], the port search, inherited sockets
    /// without a name), in place of `TLS`. `LISTEN` entries are marked each
    /// (`tls=0.0.0.0:8443`), inherited ones by name (`https`).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env()
    ///     .tls(true)
    ///     .tls_files("/etc/app/cert.pem", "/etc/app/key.pem");
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, on: bool) -> Self {
        self.overrides.tls = Some(on);
        self
    }

    /// The certificate chain and key (PEM) of the TLS listeners, in place of
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE` (and the systemd credentials). The
    /// files are read at [`Server::listen`], and again whenever they change.
    ///
    /// ```no_run
    /// // HTTPS on 8443 beside plain HTTP on 8080, the pair where certbot renews it.
    /// let server = portkeeper::Server::from_vars([("LISTEN", "tls=0.0.0.0:8443,0.0.0.0:8080")])
    ///     .tls_files(
    ///         "/etc/letsencrypt/live/example.com/fullchain.pem",
    ///         "/etc/letsencrypt/live/example.com/privkey.pem",
    ///     );
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.overrides.tls_files = Some((cert.into(), key.into()));
        self
    }

    /// Requires client certificates that chain to the CA certificates (PEM)
    /// in `path`, in place of `TLS_CLIENT_CA_FILE`; handlers read the
    /// verified identity with [`ClientIdentity`](crate::ClientIdentity).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env()
    ///     .tls(true)
    ///     .tls_files("/etc/app/cert.pem", "/etc/app/key.pem")
    ///     .tls_client_ca("/etc/app/clients-ca.pem");
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_client_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.overrides.tls_client_ca = Some(path.into());
        self
    }

    /// Development diagnostics (the debug routes, debug logging unless
    /// `LOG_LEVEL` says otherwise), in place of `DEBUG`.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().debug(cfg!(debug_assertions));
    /// # let _ = server;
    /// ```
    pub fn debug(mut self, on: bool) -> Self {
        self.overrides.debug = Some(on);
        self
    }

    /// Hands the socket to a replaced executable, in place of `RELOAD`.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().reload(true);
    /// # let _ = server;
    /// ```
    pub fn reload(mut self, on: bool) -> Self {
        self.overrides.reload = Some(on);
        self
    }

    /// Mounts the built-in routes under `prefix` (`"/_portkeeper"` gives
    /// `/_portkeeper/health` and `/_portkeeper/info`), leaving `/health` and
    /// `/info` to the app. The prefix starts with `/` and does not end with
    /// one; anything else is refused by [`Server::listen`] (exit 78).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().builtin_routes_at("/_portkeeper");
    /// # let _ = server;
    /// ```
    pub fn builtin_routes_at(mut self, prefix: &str) -> Self {
        self.builtins = Builtins::At(prefix.to_owned());
        self
    }

    /// Serves the app alone, without the built-in routes (`/health`, `/ready`, `/metrics`, `/info`).
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().without_builtin_routes();
    /// # let _ = server;
    /// ```
    pub fn without_builtin_routes(mut self) -> Self {
        self.builtins = Builtins::Off;
        self
    }

    /// Stops gracefully when `signal` completes, as on SIGTERM: `/ready`
    /// answers 503, serving goes on for `SHUTDOWN_DELAY`, then stop
    /// accepting, finish open requests within `SHUTDOWN_TIMEOUT`, exit 0.
    /// SIGTERM and SIGINT still stop the server too.
    ///
    /// ```no_run
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let server = portkeeper::Server::from_env().with_graceful_shutdown(async {
    ///     let _ = stopped.await;
    /// });
    /// # let _ = (server, stop);
    /// ```
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Whether portkeeper handles SIGTERM and SIGINT (default: yes): the
    /// first begins the graceful stop, a second cuts the drain short. With
    /// `false` no handler is installed and the host stops the server through
    /// [`Server::with_graceful_shutdown`] or [`Serve::with_graceful_shutdown`].
    /// Either way, once serving ends the signals do again what they did
    /// before (terminate, or stay ignored).
    ///
    /// ```no_run
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let server = portkeeper::Server::from_env()
    ///     .signals(false)
    ///     .with_graceful_shutdown(async {
    ///         let _ = stopped.await;
    ///     });
    /// # let _ = (server, stop);
    /// ```
    pub fn signals(mut self, handle: bool) -> Self {
        self.effects.signals = handle;
        self
    }

    /// Whether binary upgrades are on (default: yes): SIGUSR2, SIGHUP
    /// without a terminal, and `RELOAD=true` start the executable again with
    /// the listeners. With `false` no SIGUSR2 or SIGHUP handler is installed
    /// (the host's own keep working), the executable is not watched, and
    /// nothing is ever re-executed.
    ///
    /// ```no_run
    /// let server = portkeeper::Server::from_env().upgrades(false);
    /// # let _ = server;
    /// ```
    pub fn upgrades(mut self, on: bool) -> Self {
        self.effects.upgrades = on;
        self
    }

    /// Does everything: reads and checks the configuration, opens the
    /// listener, starts the runtime, serves `app` beside the built-in routes
    /// until a stop, and returns the exit status for `main` (0 after a clean
    /// stop; see [`Error`] for the others).
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let app = Router::new().route("/", get(|| async { "hello" }));
    ///     portkeeper::Server::from_env().without_builtin_routes().run(app)
    /// }
    /// ```
    pub fn run(self, app: Router) -> ExitCode {
        let listening = match self.listen() {
            Ok(listening) => listening,
            Err(err) => return err.report(),
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => return Error::system("cannot start the async runtime", err).report(),
        };
        match runtime.block_on(listening.serve(app).into_future()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => err.report(),
        }
    }

    /// Reads and checks the configuration, starts logging and opens the
    /// listeners by the chain (inherited, else `LISTEN`, else fixed, else
    /// searched). It needs no runtime and may be called inside one (from
    /// `#[tokio::main]`): it reads the environment and never writes it.
    /// Opening before anything else starts means a busy port or a bad
    /// setting is reported first.
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let listening = match portkeeper::Server::from_env().listen() {
    ///         Ok(listening) => listening,
    ///         Err(err) => return err.report(),
    ///     };
    ///     let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    ///     let app = Router::new().route("/", get(|| async { "hello" }));
    ///     match runtime.block_on(std::future::IntoFuture::into_future(listening.serve(app))) {
    ///         Ok(()) => std::process::ExitCode::SUCCESS,
    ///         Err(err) => err.report(),
    ///     }
    /// }
    /// ```
    pub fn listen(self) -> Result<Listening, Error> {
        let env = self.environment()?;
        let config = Config::load(&env, &self.overrides)?;
        check_prefix(&self.builtins)?;
        if self.logging {
            logging::init(&config.log);
        }
        env.warn_ignored();
        tracing::debug!(?config, "configuration");
        auth::log_policy(&config.auth);

        // Read before anything may replace the file: afterwards /proc/self/exe
        // names the deleted inode, and this path the new executable.
        let executable = std::env::current_exe();
        let handoff_notify = protocol_var(upgrade::HANDOFF_NOTIFY_VAR);
        let bound = startup::open_listener(&config.listener, handoff_notify.is_some())?;
        let edge = startup::edge(&config, &bound)?;
        startup::warn_if_debug_is_exposed(config.debug, &bound);
        let supervision = startup::supervision();
        let succession = startup::succession(
            config.upgrade.reload,
            &bound,
            executable,
            handoff_notify.as_deref(),
        );
        Ok(Listening {
            config,
            bound,
            edge,
            supervision,
            succession,
            builtins: self.builtins,
            shutdown: self.shutdown,
            effects: self.effects,
        })
    }
}

impl Server {
    /// The variables this server reads: `.env` (unless turned off) under the
    /// real environment, with the prefix if any; or the given variables.
    fn environment(&self) -> Result<Environment, ConfigError> {
        match &self.source {
            ConfigSource::Environment => {
                let prefix = self.prefix.as_deref().unwrap_or_default();
                if self.prefix.is_some() && !is_valid_env_prefix(prefix) {
                    return Err(ConfigError::invalid(
                        "from_env_prefixed",
                        prefix,
                        "a prefix of capital letters, digits and underscores, such as APP_",
                    ));
                }
                let dotenv = if self.dotenv {
                    Environment::read_dotenv(Path::new(".env"))?
                } else {
                    Vec::new()
                };
                Ok(Environment::with_prefix(
                    prefix,
                    dotenv,
                    std::env::vars_os(),
                ))
            }
            ConfigSource::Vars(vars) => Ok(Environment::new(vars.clone(), real_protocol_vars())),
        }
    }
}

/// A variable prefix: `[A-Z0-9_]+`.
fn is_valid_env_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A built-in prefix is a path: `/name`, without a trailing slash.
fn check_prefix(builtins: &Builtins) -> Result<(), ConfigError> {
    match builtins {
        Builtins::At(prefix)
            if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) =>
        {
            Err(ConfigError::invalid(
                "builtin_routes_at",
                prefix.clone(),
                "a path such as /_portkeeper (a leading slash, no trailing one)",
            ))
        }
        _ => Ok(()),
    }
}

/// A server whose listener is open, ready to serve inside a tokio runtime.
///
/// From [`Server::listen`]. Serve it with [`Listening::serve`] (portkeeper's
/// drain, readiness, upgrades), or take the bare socket with
/// [`Listening::into_listener`] for `axum::serve`.
pub struct Listening {
    config: Config,
    bound: listener::Bound,
    edge: lifecycle::Edge,
    supervision: Supervision,
    succession: Succession,
    builtins: Builtins,
    shutdown: Option<ShutdownSignal>,
    effects: Effects,
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("address", &self.bound.primary().info.address)
            .field("source", &self.bound.primary().info.source)
            .field("listeners", &self.bound.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Listening {
    /// The TCP address of the first listener that serves the app (for
    /// `API_PORT=0`, the kernel's choice); with several listeners (`LISTEN`,
    /// several inherited sockets) the first app listener in order, else the
    /// first TCP listener. `None` when every listener is a Unix socket.
    ///
    /// ```no_run
    /// let listening = portkeeper::Server::from_vars([("API_PORT", "0")]).listen()?;
    /// if let Some(address) = listening.local_addr() {
    ///     println!("listening on {address}");
    /// }
    /// # Ok::<(), portkeeper::Error>(())
    /// ```
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound.primary().info.address.tcp().or_else(|| {
            self.bound
                .listeners
                .iter()
                .find_map(|l| l.info.address.tcp())
        })
    }

    /// Serves `app` beside the built-in routes until SIGTERM or SIGINT (or
    /// a graceful-shutdown future), then drains; hands the listeners to a
    /// new executable on SIGUSR2 (or SIGHUP without a terminal, or `RELOAD`).
    /// Tells systemd it is ready, and feeds its watchdog. Await it (or spawn
    /// it) inside a tokio runtime with the time, IO and signal drivers
    /// (`enable_all`); like `axum::serve`, the value is a [`Serve`] that
    /// becomes a `Send` future, so `tokio::spawn` takes it.
    ///
    /// The future ends once the drain is over: `Ok(())` after a clean stop
    /// or a handoff; when `SHUTDOWN_TIMEOUT` passes, the connections still
    /// open are closed first.
    ///
    /// ```no_run
    /// # use axum::Router;
    /// # async fn demo(listening: portkeeper::Listening, app: Router) -> Result<(), portkeeper::Error> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let server = tokio::spawn(
    ///     listening
    ///         .serve(app)
    ///         .with_graceful_shutdown(async {
    ///             let _ = stopped.await;
    ///         })
    ///         .into_future(),
    /// );
    /// // ... later:
    /// let _ = stop.send(());
    /// server.await.expect("the server task")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve(self, app: Router) -> Serve {
        Serve {
            listening: self,
            app,
        }
    }

    /// The bare listening socket, for `axum::serve` or any server that takes an
    /// [`axum::serve::Listener`]. Must be called inside a tokio runtime.
    ///
    /// Only for a server with exactly one listener, a plain TCP one: with
    /// several (`LISTEN`, `ADMIN_LISTEN`, several inherited sockets), a Unix
    /// socket, or one marked `tls`, `proxy` or `redirect`, it returns an
    /// error saying so (exit status 78); serve those with [`Listening::serve`].
    ///
    /// ```no_run
    /// # async fn demo(listening: portkeeper::Listening) -> Result<(), portkeeper::Error> {
    /// let app = axum::Router::new();
    /// axum::serve(listening.into_listener()?, app).await.expect("serving");
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_listener(self) -> Result<Listener, Error> {
        let count = self.bound.listeners.len();
        let kinds = self
            .bound
            .listeners
            .iter()
            .map(|l| l.info.address.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut listeners = self.bound.listeners;
        match (listeners.pop(), listeners.is_empty()) {
            (
                Some(listener::BoundListener {
                    socket: listener::Socket::Tcp(socket),
                    info,
                    ..
                }),
                true,
            ) => {
                if info.marks != listener::Marks::default() {
                    return Err(listener::ListenError::MarkedListener {
                        address: info.address.to_string(),
                        marks: info.marks,
                    }
                    .into());
                }
                let socket = tokio::net::TcpListener::from_std(socket)
                    .map_err(|err| Error::system("cannot register the listener with tokio", err))?;
                Ok(Listener::new(socket, info))
            }
            _ => Err(listener::ListenError::NotOneTcpListener { count, kinds }.into()),
        }
    }
}

/// A server about to serve, from [`Listening::serve`]: await it (it is
/// [`IntoFuture`], and the future is `Send`), or add a stop signal first with
/// [`Serve::with_graceful_shutdown`]. Shaped like `axum::serve`'s.
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    listening: Listening,
    app: Router,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Stops gracefully when `signal` completes, as on SIGTERM (see
    /// [`Server::with_graceful_shutdown`]); a stop signal given to the
    /// [`Server`] still counts too, whichever comes first.
    ///
    /// ```no_run
    /// # async fn demo(listening: portkeeper::Listening) -> Result<(), portkeeper::Error> {
    /// listening
    ///     .serve(axum::Router::new())
    ///     .with_graceful_shutdown(async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await
    /// # }
    /// ```
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.listening.shutdown = Some(match self.listening.shutdown.take() {
            None => Box::pin(signal),
            Some(earlier) => Box::pin(async move {
                tokio::select! {
                    () = earlier => {}
                    () = signal => {}
                }
            }),
        });
        self
    }
}

impl IntoFuture for Serve {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        let Serve { listening, app } = self;
        let config = listening.config;
        // On a terminal the first process stays until its successors end;
        // under a development watcher the server follows its parent.
        let foreground = upgrade::Foreground::at_start(
            listening.bound.primary().info.source,
            listening.supervision.notifier.is_some(),
            listening.effects.signals,
            listening.effects.upgrades,
        );
        let served = lifecycle::run(
            lifecycle::Plan {
                stop: config.stop,
                limits: config.limits,
                auth: config.auth,
                debug: config.debug,
                fd_name: config.listener.listen_fd_name,
                signals: listening.effects.signals,
                upgrades: listening.effects.upgrades,
                bound: listening.bound,
                supervision: listening.supervision,
                succession: listening.succession,
                builtins: listening.builtins,
                shutdown: listening.shutdown,
                edge: listening.edge,
            },
            app,
        );
        Box::pin(async move { foreground.stay(served.await).await })
    }
}
