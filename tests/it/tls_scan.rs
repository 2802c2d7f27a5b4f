//! A TLS scanner against the real binary: testssl.sh (Debian's `testssl.sh`
//! package, command `testssl`) scans a TLS listener on loopback that serves
//! the development certificate made by the command in docs/tls.md (run from
//! there, so the documented command cannot rot). The scan's JSON is parsed
//! and checked: TLS 1.2 and 1.3 only, AEAD suites with forward secrecy only,
//! every vulnerability testssl checks answered "not vulnerable", and no
//! scanner error. The check itself is tested on doctored findings, so an
//! empty or failed scan cannot pass.
//!
//! `PORTKEEPER_TLS_SCAN_REPORT=1` prints the scanner's findings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::support::*;

/// One scan's bound: both scans side by side took 43 to 117 s on a shared
/// 2-core machine with a debug build, depending on its load; most of it is
/// testssl waiting out its renegotiation and vulnerability checks.
const SCAN_DEADLINE: Duration = Duration::from_secs(240);

/// What testssl is asked for: protocols (`-p`), cipher categories (`-s`), every
/// suite offered per protocol (`-E`) and the vulnerabilities (`-U`). Not the
/// certificate checks (`-S`): a self-signed development certificate fails
/// those by design.
const SCAN_ARGS: &[&str] = &[
    "--quiet",
    "--color",
    "0",
    "--warnings",
    "off",
    "--connect-timeout",
    "10",
    "--openssl-timeout",
    "10",
    "-p",
    "-s",
    "-E",
    "-U",
];

/// The suites rustls 0.23 with ring offers (all AEAD, all with ECDHE):
/// TLS 1.3's three, and TLS 1.2's for ECDSA and RSA certificates.
const ALLOWED_SUITES: &[&str] = &[
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The vulnerability checks of testssl 3.0 (`-U`) that must each have run
/// and found nothing: a check missing from the output is a failure too.
const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "BREACH",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

/// One line of testssl's flat JSON (`--jsonfile`).
#[derive(Debug, Clone)]
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

#[test]
fn testssl_finds_only_tls_1_2_and_1_3_with_aead_suites_and_no_vulnerability() {
    let (Some(testssl), Some(openssl)) = (peer_tool("testssl"), peer_tool("openssl")) else {
        return;
    };
    let dir = TempDir::new();
    // The documented ECDSA certificate, and an RSA one: TLS 1.2 offers other
    // suites for each, and ROBOT and DROWN concern RSA keys.
    let ecdsa = development_certificate(dir.path()).unwrap();
    let rsa = rsa_certificate(&openssl, dir.path()).unwrap();

    // Both scans at once: each spends most of its time waiting on timeouts.
    let started = Instant::now();
    let (ecdsa_scan, rsa_scan) = std::thread::scope(|s| {
        let ecdsa = s.spawn(|| scan(&testssl, dir.path(), &ecdsa, "ecdsa"));
        let rsa = s.spawn(|| scan(&testssl, dir.path(), &rsa, "rsa"));
        (ecdsa.join().unwrap(), rsa.join().unwrap())
    });
    eprintln!(
        "testssl: both scans took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for (label, findings) in [("ECDSA", ecdsa_scan), ("RSA", rsa_scan)] {
        let findings = findings.unwrap();
        if std::env::var_os("PORTKEEPER_TLS_SCAN_REPORT").is_some() {
            for f in &findings {
                eprintln!("{label} {:<28} {:<8} {}", f.id, f.severity, f.finding);
            }
        }
        let problems = scan_problems(&findings);
        assert!(
            problems.is_empty(),
            "the scan with the {label} certificate found:\n{}\nall findings:\n{findings:#?}",
            problems.join("\n")
        );
    }
}

/// Serves `pair` with `TLS=true` on loopback, scans it with testssl, and
/// checks the server is still up after hundreds of odd handshakes (it stops
/// cleanly); returns the findings.
fn scan(
    testssl: &Path,
    dir: &Path,
    pair: &(PathBuf, PathBuf),
    label: &str,
) -> Result<Vec<Finding>> {
    let server_dir = TempDir::new();
    let mut cmd = loopback_server(&server_dir);
    cmd.env("TLS", "true")
        .env("TLS_CERT_FILE", &pair.0)
        .env("TLS_KEY_FILE", &pair.1);
    let mut server = Running::spawn(cmd, &format!("server-{label}"))?;
    let addr = server.serving_address()?;

    let json = dir.join(format!("scan-{label}.json"));
    let mut scan = clean_command(testssl);
    scan.current_dir(dir)
        .args(SCAN_ARGS)
        .arg("--jsonfile")
        .arg(&json)
        .arg(addr.to_string());
    let started = Instant::now();
    let mut running = Running::spawn(scan, &format!("testssl-{label}"))?;
    let status = running.wait_exit(SCAN_DEADLINE)?;
    eprintln!(
        "testssl {label} {addr}: {status} after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let findings = read_findings(&json)?;

    server.signal("TERM")?;
    let status = server.wait_exit(DEADLINE)?;
    if !status.success() {
        bail!("the {label} server exited with {status} after the scan");
    }
    Ok(findings)
}

/// A self-signed RSA-2048 certificate for localhost, made with openssl.
fn rsa_certificate(openssl: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("rsa.pem"), dir.join("rsa-key.pem"));
    let mut cmd = clean_command(openssl);
    cmd.args([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    ])
    .args([
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ])
    .arg("-keyout")
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    let (status, stderr) = run_to_exit(cmd, DEADLINE)?;
    if !status.success() {
        bail!("openssl req failed ({status}): {stderr}");
    }
    Ok((cert, key))
}

#[test]
fn the_scan_check_fails_on_an_old_protocol_a_weak_suite_a_vulnerability_or_a_gap() {
    let good = passing_findings();
    assert_eq!(scan_problems(&good), Vec::<String>::new());

    let with = |id: &str, severity: &str, text: &str| {
        let mut findings = good.clone();
        findings.retain(|f| f.id != id);
        findings.push(finding(id, severity, text));
        scan_problems(&findings)
    };
    let problems = with("TLS1_1", "LOW", "offered (deprecated)");
    assert!(
        problems.iter().any(|p| p.contains("TLS1_1")),
        "{problems:?}"
    );
    let problems = with(
        "cipher-tls1_2_xc013",
        "INFO",
        "TLS 1.2   xc013   ECDHE-RSA-AES128-SHA   ECDH 253   AES   128   TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")),
        "{problems:?}"
    );
    let problems = with(
        "cipher-tls1_1_xc02b",
        "INFO",
        "TLS 1.1   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256   ECDH 253   AESGCM   128   TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    );
    assert!(
        problems.iter().any(|p| p.contains("cipher-tls1_1")),
        "{problems:?}"
    );
    let problems = with("LUCKY13", "LOW", "potentially vulnerable");
    assert!(
        problems.iter().any(|p| p.contains("LUCKY13")),
        "{problems:?}"
    );
    let problems = with("scanProblem", "WARN", "connect problem");
    assert!(
        problems.iter().any(|p| p.contains("scanProblem")),
        "{problems:?}"
    );
    let mut gap = good.clone();
    gap.retain(|f| f.id != "heartbleed" && !f.id.starts_with("cipher-tls1_3"));
    let problems = scan_problems(&gap);
    assert!(
        problems.iter().any(|p| p.contains("heartbleed")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("TLS 1.3 suite")),
        "{problems:?}"
    );
    assert!(!scan_problems(&[]).is_empty());
}

/// Everything wrong with a scan: each line names the finding.
fn scan_problems(findings: &[Finding]) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id: BTreeMap<&str, &Finding> = findings.iter().map(|f| (f.id.as_str(), f)).collect();

    // Anything rated above INFO (LOW, MEDIUM, HIGH, CRITICAL) is a finding
    // against us; WARN and FATAL are the scanner's own trouble, which
    // would leave checks unanswered.
    for f in findings {
        if !matches!(f.severity.as_str(), "OK" | "INFO") {
            problems.push(format!("{} is {}: {}", f.id, f.severity, f.finding));
        }
    }

    for (id, offered) in [
        ("SSLv2", false),
        ("SSLv3", false),
        ("TLS1", false),
        ("TLS1_1", false),
        ("TLS1_2", true),
        ("TLS1_3", true),
        ("ALPN_HTTP2", true),
    ] {
        match by_id.get(id) {
            None => problems.push(format!("{id}: not in the scan")),
            Some(f) if f.finding.starts_with("offered") != offered && id != "ALPN_HTTP2" => {
                problems.push(format!(
                    "{id}: {:?} (expected {})",
                    f.finding,
                    if offered { "offered" } else { "not offered" }
                ));
            }
            Some(f) if id == "ALPN_HTTP2" && f.finding != "h2" => {
                problems.push(format!("{id}: {:?} (expected h2)", f.finding));
            }
            Some(_) => {}
        }
    }

    // The cipher categories: nothing but "strong" (AEAD) may be offered.
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        match by_id.get(id) {
            None => problems.push(format!("{id}: not in the scan")),
            Some(f) if f.finding != "not offered" => {
                problems.push(format!("{id}: {:?} (expected not offered)", f.finding));
            }
            Some(_) => {}
        }
    }

    // Every suite offered, per protocol: "TLS 1.2  xc02c  <openssl name> ... <IANA name>".
    let mut per_protocol = BTreeMap::from([("1_2", 0), ("1_3", 0)]);
    for f in findings.iter().filter(|f| f.id.starts_with("cipher-tls")) {
        let protocol = f.id["cipher-tls".len()..]
            .split('_')
            .take(2)
            .collect::<Vec<_>>();
        let protocol = protocol.join("_");
        let suite = f.finding.split_whitespace().last().unwrap_or("");
        match per_protocol.get_mut(protocol.as_str()) {
            Some(count) => *count += 1,
            None => problems.push(format!("{}: a suite offered on an old protocol", f.id)),
        }
        if !ALLOWED_SUITES.contains(&suite) {
            problems.push(format!(
                "{}: {suite} offered (expected only AEAD suites with ECDHE: {ALLOWED_SUITES:?})",
                f.id
            ));
        }
    }
    for (protocol, count) in per_protocol {
        if count == 0 {
            let name = protocol.replace('_', ".");
            problems.push(format!(
                "no TLS {name} suite in the scan (cipher-tls{protocol}_*)"
            ));
        }
    }

    for id in VULNERABILITIES {
        if !by_id.contains_key(id) {
            problems.push(format!("{id}: not in the scan (the check did not run)"));
        }
    }
    problems
}

/// testssl's flat JSON: an array of `{"id", "severity", "finding", ...}`.
fn read_findings(path: &Path) -> Result<Vec<Finding>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("testssl wrote no {path:?}"))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("testssl's JSON")?;
    let entries = value
        .as_array()
        .ok_or_else(|| anyhow!("testssl's JSON is not an array: {text}"))?;
    entries
        .iter()
        .map(|e| {
            let field = |name: &str| {
                e.get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("no {name} in {e}"))
            };
            Ok(Finding {
                id: field("id")?,
                severity: field("severity")?,
                finding: field("finding")?,
            })
        })
        .collect()
}

/// Runs the development-certificate command of docs/tls.md (the `sh` block
/// after `<!-- test:dev-certificate -->`) in `dir`; returns the certificate
/// and key it made.
fn development_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tls.md");
    let text = std::fs::read_to_string(&docs)?;
    let script = documented_block(&text, "<!-- test:dev-certificate -->")
        .ok_or_else(|| anyhow!("no sh block after <!-- test:dev-certificate --> in {docs:?}"))?;
    let mut cmd = clean_command("sh");
    cmd.current_dir(dir).args(["-eu", "-c", &script]);
    let (status, stderr) = run_to_exit(cmd, DEADLINE)?;
    if !status.success() {
        bail!("the documented command failed ({status}):\n{script}\n{stderr}");
    }
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost-key.pem"));
    for file in [&cert, &key] {
        if !file.is_file() {
            bail!("the documented command made no {file:?}:\n{script}");
        }
    }
    Ok((cert, key))
}

/// The body of the first fenced `sh` block after the line `marker`.
fn documented_block(text: &str, marker: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != marker).skip(1);
    if lines.next()?.trim() != "```sh" {
        return None;
    }
    let body: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    Some(body.join("\n"))
}

fn finding(id: &str, severity: &str, text: &str) -> Finding {
    Finding {
        id: id.to_owned(),
        severity: severity.to_owned(),
        finding: text.to_owned(),
    }
}

/// The findings of a clean scan, as testssl 3.0.8 reports portkeeper's.
fn passing_findings() -> Vec<Finding> {
    let mut findings = vec![
        finding("service", "INFO", "HTTP"),
        finding("SSLv2", "OK", "not offered"),
        finding("SSLv3", "OK", "not offered"),
        finding("TLS1", "INFO", "not offered"),
        finding("TLS1_1", "INFO", "not offered"),
        finding("TLS1_2", "OK", "offered"),
        finding("TLS1_3", "OK", "offered with final"),
        finding("ALPN_HTTP2", "OK", "h2"),
        finding("ALPN", "INFO", "http/1.1"),
        finding("cipherlist_NULL", "OK", "not offered"),
        finding("cipherlist_aNULL", "OK", "not offered"),
        finding("cipherlist_EXPORT", "OK", "not offered"),
        finding("cipherlist_LOW", "OK", "not offered"),
        finding("cipherlist_3DES_IDEA", "INFO", "not offered"),
        finding("cipherlist_AVERAGE", "INFO", "not offered"),
        finding("cipherlist_STRONG", "OK", "offered"),
        finding(
            "cipher-tls1_2_xc02c",
            "INFO",
            "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384     ECDH 253   AESGCM      256      TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
        finding(
            "cipher-tls1_3_x1301",
            "INFO",
            "TLS 1.3   x1301   TLS_AES_128_GCM_SHA256            ECDH 253   AESGCM      128      TLS_AES_128_GCM_SHA256",
        ),
    ];
    findings.extend(
        VULNERABILITIES
            .iter()
            .map(|id| finding(id, "OK", "not vulnerable")),
    );
    findings
}

#[test]
fn the_documented_block_is_found_after_its_marker() {
    let text = "intro\n<!-- m -->\n```sh\nopenssl req \\\n  -x509\n```\nafter\n";
    assert_eq!(
        documented_block(text, "<!-- m -->").as_deref(),
        Some("openssl req \\\n  -x509")
    );
    assert_eq!(documented_block("<!-- m -->\ntext\n", "<!-- m -->"), None);
    assert_eq!(documented_block("no marker\n", "<!-- m -->"), None);
}
