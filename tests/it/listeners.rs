//! Every socket: several listeners, Unix sockets, the admin role, `LISTEN`,
//! `ADMIN_LISTEN`, `UNIX_SOCKET_MODE` and `PORT`, against the real binary.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::support::*;

/// GET over a Unix socket: status and body.
fn unix_get(path: &Path, request_path: &str) -> Result<(u16, String)> {
    let mut stream =
        UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {request_path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse_response(&response).with_context(|| format!("GET {request_path} on {}", path.display()))
}

fn unix_json(path: &Path, request_path: &str) -> Result<serde_json::Value> {
    let (status, body) = unix_get(path, request_path)?;
    if status != 200 {
        bail!("GET {request_path}: status {status}, body {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Waits for `count` "serving" lines and returns them in order.
fn serving_lines(server: &mut Running, count: usize) -> Vec<String> {
    let end = Instant::now() + DEADLINE;
    loop {
        let lines: Vec<String> = server
            .output()
            .lines()
            .filter(|l| l.contains(" serving ") && l.contains(" role="))
            .map(str::to_owned)
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < end,
            "no {count} serving lines:\n{}",
            server.output()
        );
        // Any line: returns once output grows or after its own deadline.
        let _ = server.wait_for_line("\u{0}never", Duration::from_millis(100));
    }
}

/// The TCP address of the serving line whose role is `role` (the first such).
fn address_of(lines: &[String], role: &str) -> SocketAddr {
    lines
        .iter()
        .find(|l| field(l, "role") == Some(role) && field(l, "port").is_some())
        .and_then(|l| field(l, "address")?.parse().ok())
        .unwrap_or_else(|| panic!("no TCP {role} listener in {lines:#?}"))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn listen_serves_tcp_and_a_unix_socket_with_its_mode_and_removes_the_file_on_stop() {
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", format!("127.0.0.1:0,{}", sock.display()))
        .env("UNIX_SOCKET_MODE", "0600");
    let mut server = Running::spawn(cmd, "listen-two").unwrap();
    let lines = serving_lines(&mut server, 2);
    let tcp = address_of(&lines, "app");
    assert_eq!(field(&lines[1], "path"), Some(&*sock.display().to_string()));

    let over_tcp = get_json(tcp, "/info").unwrap();
    let over_unix = unix_json(&sock, "/info").unwrap();
    assert_eq!(over_tcp["pid"], over_unix["pid"]);
    let listeners = over_unix["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2, "{over_unix}");
    assert_eq!(listeners[0]["address"], tcp.to_string());
    assert_eq!(listeners[1]["address"], sock.display().to_string());
    for listener in listeners {
        assert_eq!(listener["role"], "app");
        assert_eq!(listener["source"], "fixed");
    }
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode_of(&sock), 0o600);

    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(
        !sock.exists(),
        "the socket file is removed at a normal stop"
    );
}

#[test]
fn an_abstract_socket_is_served_and_the_default_mode_is_0660() {
    let dir = TempDir::new();
    let sock = dir.path().join("s");
    let name = format!("portkeeper-it-{}", std::process::id());
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", format!("@{name},{}", sock.display()));
    let mut server = Running::spawn(cmd, "listen-abstract").unwrap();
    serving_lines(&mut server, 2);
    assert_eq!(mode_of(&sock), 0o660);
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut stream = UnixStream::connect_addr(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert_eq!(parse_response(&response).unwrap().0, 200, "{response}");
}

#[test]
fn admin_listen_takes_the_builtin_routes_off_the_public_listeners() {
    let dir = TempDir::new();
    let admin_sock = dir.path().join("admin.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", "127.0.0.1:0").env(
        "ADMIN_LISTEN",
        format!("127.0.0.1:0,{}", admin_sock.display()),
    );
    let mut server = Running::spawn(cmd, "admin-listen").unwrap();
    let lines = serving_lines(&mut server, 3);
    let public = address_of(&lines, "app");
    let admin = address_of(&lines, "admin");
    // The bare binary's app is its page at `/`: the public listener answers
    // that, and 404 for the built-in routes.
    for path in ["/info", "/health"] {
        assert_eq!(http_get(public, path).unwrap().0, 404, "{path}");
    }
    assert_eq!(http_get(public, "/").unwrap().0, 200);
    let info = get_json(admin, "/info").unwrap();
    assert_eq!(get_json(admin, "/health").unwrap()["status"], "ok");
    assert_eq!(unix_json(&admin_sock, "/health").unwrap()["status"], "ok");
    let roles: Vec<&str> = info["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["app", "admin", "admin"], "{info}");
    assert_eq!(info["listener"]["address"], public.to_string());
}

#[test]
fn port_is_used_when_api_port_is_unset_and_api_port_wins() {
    let dir = TempDir::new();
    let held = owned_port_run(2);
    let (port, other) = (port_of(&held[0]), port_of(&held[1]));
    drop(held);
    let mut cmd = portkeeper(dir.path());
    cmd.env("HOST", "127.0.0.1").env("PORT", port.to_string());
    let mut server = Running::spawn(cmd, "platform-port").unwrap();
    assert_eq!(server.serving_address().unwrap().port(), port);
    drop(server);

    let mut cmd = portkeeper(dir.path());
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("API_PORT", other.to_string());
    let mut server = Running::spawn(cmd, "api-port-wins").unwrap();
    assert_eq!(server.serving_address().unwrap().port(), other);
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_is_left_alone() {
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    // Stale: bound once, its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", sock.display().to_string());
    let mut server = Running::spawn(cmd, "stale").unwrap();
    serving_lines(&mut server, 1);
    assert_eq!(unix_json(&sock, "/health").unwrap()["status"], "ok");

    // Live: the first server still listens there.
    let mut second = portkeeper(dir.path());
    second.env("LISTEN", sock.display().to_string());
    let (status, stderr) = run_to_exit(second, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    let line = last_line(&stderr);
    assert!(
        line.starts_with("portkeeper: error: cannot listen on "),
        "{line}"
    );
    assert!(line.contains(&sock.display().to_string()), "{line}");
    assert!(line.contains("another process is listening"), "{line}");
    // ... and the first one is untouched.
    assert_eq!(unix_json(&sock, "/health").unwrap()["status"], "ok");
}

#[test]
fn a_busy_listen_address_is_exit_69_naming_it_and_listen() {
    let dir = TempDir::new();
    let held = loopback_listener();
    let addr = held.local_addr().unwrap();
    let sock = dir.path().join("first.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", format!("{},{addr}", sock.display()));
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    let line = last_line(&stderr);
    assert!(line.contains(&format!("{addr}: address in use")), "{line}");
    assert!(line.contains("change LISTEN"), "{line}");
    assert!(
        !sock.exists(),
        "a failed start leaves no socket file behind"
    );
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

/// Runs the binary with `vars` and returns its exit status and last stderr line.
fn refused(dir: &Path, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = portkeeper(dir);
    cmd.envs(vars.iter().copied());
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    (status.code(), last_line(&stderr).to_owned())
}

#[test]
fn bad_listen_input_is_one_line_and_a_documented_exit_status() {
    let dir = TempDir::new();
    let long = format!("/tmp/{}", "x".repeat(120));
    let missing = dir.path().join("no/such/dir/http.sock");
    let file = dir.path().join("regular");
    std::fs::write(&file, "not a socket").unwrap();
    // (variables, exit status, what the error line says)
    type Case = (Vec<(&'static str, String)>, i32, &'static str);
    let cases: Vec<Case> = vec![
        (vec![("LISTEN", long.clone())], 78, "more than the 107"),
        (
            vec![("LISTEN", "localhost:80".into())],
            78,
            "LISTEN: \"localhost:80\"",
        ),
        (vec![("LISTEN", "web=127.0.0.1:0".into())], 78, "not a role"),
        (
            vec![("LISTEN", "127.0.0.1:0".into()), ("API_PORT", "0".into())],
            78,
            "LISTEN: ",
        ),
        (
            vec![("LISTEN", missing.display().to_string())],
            78,
            "the directory does not exist",
        ),
        (
            vec![("LISTEN", file.display().to_string())],
            78,
            "a regular file is in the way",
        ),
        (
            vec![("UNIX_SOCKET_MODE", "888".into())],
            78,
            "UNIX_SOCKET_MODE",
        ),
    ];
    for (vars, code, needle) in cases {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, line) = refused(dir.path(), &vars);
        assert_eq!(status, Some(code), "{vars:?}: {line}");
        assert!(line.starts_with("portkeeper: error: "), "{line}");
        assert!(line.contains(needle), "{vars:?}: {line}");
    }
    assert!(file.exists(), "a regular file in the way is never removed");
}

#[test]
fn a_directory_without_write_permission_is_exit_77() {
    let dir = TempDir::new();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", closed.join("http.sock").display().to_string());
    if is_root() {
        // Root ignores permissions: run as nobody, for whom the directory
        // (root's, 0755) is not writable.
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let (status, stderr) = run_to_exit(cmd, DEADLINE).unwrap();
    assert_eq!(status.code(), Some(77), "{stderr}");
    let line = last_line(&stderr);
    assert!(line.contains("permission denied"), "{line}");
    assert!(line.contains(&closed.display().to_string()), "{line}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn socket_activate(tool: &Path, listens: &[String], names: &str) -> Command {
    let mut cmd = clean_command(tool);
    for listen in listens {
        cmd.arg(format!("--listen={listen}"));
    }
    cmd.arg(format!("--fdname={names}"))
        .args(["-E", "HOST=127.0.0.1", "--"])
        .arg(binary());
    cmd
}

#[test]
fn systemd_socket_activate_ipv4_ipv6_and_unix_are_all_served_and_admin_has_the_builtins() {
    let Some(tool) = peer_tool("systemd-socket-activate") else {
        return;
    };
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    let held = owned_port_run(3);
    let (port, admin_port, other_port) = (port_of(&held[0]), port_of(&held[1]), port_of(&held[2]));
    drop(held);
    let cmd = socket_activate(
        &tool,
        &[
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            sock.display().to_string(),
            format!("127.0.0.1:{admin_port}"),
            format!("127.0.0.1:{other_port}"),
        ],
        "http:http:http:admin:metrics",
    );
    let mut activator = Running::spawn(cmd, "activate-five").unwrap();
    activator.wait_for_line("as 7", DEADLINE).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let info = get_json(admin, "/info").unwrap();
    let listeners = info["listeners"].as_array().unwrap();
    let seen: Vec<(String, String, i64, String)> = listeners
        .iter()
        .map(|l| {
            (
                l["address"].as_str().unwrap().to_owned(),
                l["role"].as_str().unwrap().to_owned(),
                l["fd"].as_i64().unwrap(),
                l["fd_name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, i64, String)> = vec![
        (format!("127.0.0.1:{port}"), "app".into(), 3, "http".into()),
        (format!("[::1]:{port}"), "app".into(), 4, "http".into()),
        (sock.display().to_string(), "app".into(), 5, "http".into()),
        (
            format!("127.0.0.1:{admin_port}"),
            "admin".into(),
            6,
            "admin".into(),
        ),
    ];
    assert_eq!(seen, expected, "{info}");
    assert!(listeners.iter().all(|l| l["source"] == "systemd"));
    // The app listeners serve the (empty) app: 404 from portkeeper, and no /info.
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(http_get(addr, "/info").unwrap().0, 404, "{addr}");
    }
    assert_eq!(unix_get(&sock, "/info").unwrap().0, 404);
    // The fifth, of another name, is closed with a line saying so.
    activator
        .wait_for_line("closed an inherited socket that is not served", DEADLINE)
        .unwrap();
    let other: SocketAddr = format!("127.0.0.1:{other_port}").parse().unwrap();
    assert!(std::net::TcpStream::connect(other).is_err());
    // The start-up lines carry the same fields, one per listener.
    let lines = serving_lines(&mut activator, 4);
    assert_eq!(field(&lines[2], "path"), Some(&*sock.display().to_string()));
    assert_eq!(field(&lines[2], "fd"), Some("5"));
    assert_eq!(field(&lines[3], "role"), Some("admin"));
    // An inherited socket file is never removed, not even at a stop.
    activator.signal("TERM").unwrap();
    activator.wait_exit(DEADLINE).unwrap();
    assert!(sock.exists(), "an inherited socket file is never unlinked");
}

#[test]
fn an_inherited_unix_socket_file_is_not_removed_at_a_stop() {
    let dir = TempDir::new();
    let sock = dir.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
    hand_over(&mut cmd, vec![listener.try_clone().unwrap().into()]);
    let mut server = Running::spawn(cmd, "inherited-unix").unwrap();
    serving_lines(&mut server, 1);
    let info = unix_json(&sock, "/info").unwrap();
    assert_eq!(info["listener"]["source"], "systemfd");
    assert_eq!(info["listener"]["address"], sock.display().to_string());
    server.signal("TERM").unwrap();
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    assert!(sock.exists(), "an inherited socket file is never unlinked");
    drop(listener);
}

#[test]
fn systemfd_unix_sockets_are_adopted_like_its_tcp_ones() {
    let Some(tool) = peer_tool("systemfd") else {
        return;
    };
    let dir = TempDir::new();
    let sock = dir.path().join("dev.sock");
    let port = port_of(&owned_port_run(1)[0]);
    let mut cmd = clean_command(tool);
    cmd.current_dir(dir.path())
        .args(["--no-pid", "-b", "128", "-s"])
        .arg(format!("http::127.0.0.1:{port}"))
        .arg("-s")
        .arg(format!("unix::{}", sock.display()))
        .arg("--")
        .arg(binary());
    let mut systemfd = Running::spawn(cmd, "systemfd-unix").unwrap();
    serving_lines(&mut systemfd, 2);
    let info = unix_json(&sock, "/info").unwrap();
    let listeners = info["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2, "{info}");
    assert!(listeners.iter().all(|l| l["source"] == "systemfd"));
    assert_eq!(listeners[1]["address"], sock.display().to_string());
    let tcp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_json(tcp, "/health").unwrap()["status"], "ok");
}

#[test]
fn an_upgrade_hands_every_listener_over_with_its_role_and_keeps_the_socket_file() {
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", format!("127.0.0.1:0,{}", sock.display()))
        .env("ADMIN_LISTEN", "127.0.0.1:0");
    let mut server = Running::spawn(cmd, "upgrade-all").unwrap();
    let lines = serving_lines(&mut server, 3);
    let public = address_of(&lines, "app");
    let admin = address_of(&lines, "admin");
    let old = get_json(admin, "/info").unwrap()["pid"].as_u64().unwrap();

    server.signal("USR2").unwrap();
    let end = Instant::now() + DEADLINE;
    let mut asked = 0;
    let successor = loop {
        asked += 1;
        // Every listener answers throughout, whoever serves it (the app
        // listeners the binary's page at `/`).
        assert_eq!(http_get(public, "/").unwrap().0, 200);
        assert_eq!(unix_get(&sock, "/").unwrap().0, 200);
        let info = get_json(admin, "/info").unwrap();
        if info["pid"].as_u64() != Some(old) {
            break info;
        }
        assert!(Instant::now() < end, "no successor after {asked} rounds");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _orphan = Successor(successor["pid"].as_u64().unwrap() as u32);
    assert!(server.wait_exit(DEADLINE).unwrap().success());
    let listeners = successor["listeners"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = listeners
        .iter()
        .map(|l| {
            (
                l["address"].as_str().unwrap().to_owned(),
                l["role"].as_str().unwrap().to_owned(),
                l["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (public.to_string(), "app".into(), "handoff".into()),
            (sock.display().to_string(), "app".into(), "handoff".into()),
            (admin.to_string(), "admin".into(), "handoff".into()),
        ]
    );
    assert!(
        sock.exists(),
        "the predecessor leaves the file to its successor"
    );
    assert_eq!(unix_get(&sock, "/").unwrap().0, 200);
    // The last of the line, bound by the same LISTEN, removes it at its stop.
    let pid = successor["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    while sock.exists() {
        assert!(
            Instant::now() < end,
            "the successor left {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx as a test-owned process: its own prefix and config in a temp dir,
/// in the foreground, proxying a loopback port to portkeeper's Unix socket.
struct Nginx {
    running: Running,
    addr: SocketAddr,
}

fn nginx_program() -> Option<PathBuf> {
    find_program("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .or_else(|| peer_tool("nginx"))
}

impl Nginx {
    fn start(program: &Path, dir: &Path, upstream: &Path) -> Result<Nginx> {
        let held = owned_port_run(1);
        let port = port_of(&held[0]);
        drop(held);
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream portkeeper {{
        server unix:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://portkeeper;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
            prefix = prefix.display(),
            upstream = upstream.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = clean_command(program);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("logs/error.log"));
        let running = Running::spawn(cmd, "nginx")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let end = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() >= end {
                bail!("nginx did not listen on {addr}: {}", running.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { running, addr })
    }
}

#[test]
fn nginx_in_front_of_the_unix_socket_answers_no_502_through_ten_upgrades() {
    let Some(nginx) = nginx_program() else {
        return;
    };
    let dir = TempDir::new();
    let sock = dir.path().join("http.sock");
    let mut cmd = portkeeper(dir.path());
    cmd.env("LISTEN", sock.display().to_string())
        .env("UNIX_SOCKET_MODE", "0666");
    let mut server = Running::spawn(cmd, "behind-nginx").unwrap();
    serving_lines(&mut server, 1);
    let proxy = Nginx::start(&nginx, dir.path(), &sock).unwrap();
    assert_eq!(http_get(proxy.addr, "/health").unwrap().0, 200);

    // Load: four clients asking /health through nginx until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let (mut ok, mut bad_gateway, mut failed) = (0u64, 0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http_get(addr, "/health") {
                        Ok((200, _)) => ok += 1,
                        Ok((502, _)) => bad_gateway += 1,
                        _ => failed += 1,
                    }
                }
                (ok, bad_gateway, failed)
            })
        })
        .collect();

    let mut pid = unix_json(&sock, "/info").unwrap()["pid"].as_u64().unwrap();
    let mut orphans = Vec::new();
    for round in 1..=10 {
        Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + DEADLINE;
        let next = loop {
            let now = unix_json(&sock, "/info").unwrap()["pid"].as_u64().unwrap();
            if now != pid {
                break now;
            }
            assert!(Instant::now() < end, "upgrade {round}: no successor");
            std::thread::sleep(Duration::from_millis(20));
        };
        orphans.push(Successor(next as u32));
        pid = next;
        // Let the load run against the new process a moment.
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut bad_gateway, mut failed) = (0, 0, 0);
    for client in clients {
        let (o, b, f) = client.join().unwrap();
        ok += o;
        bad_gateway += b;
        failed += f;
    }
    eprintln!(
        "nginx -> unix socket through 10 upgrades: {ok} requests answered 200, {bad_gateway} answered 502, {failed} failed"
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert_eq!((bad_gateway, failed), (0, 0), "{}", proxy.running.output());
    assert!(server.wait_exit(DEADLINE).unwrap().success());
}
