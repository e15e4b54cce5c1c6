//! The wire as an assessor tests it (issue 21, item 4): clients and
//! endpoints that are not what they should be are refused in the TLS
//! handshake, before any request or data crosses, with a message that
//! says why, and each refusal is audited; and a capture of a backup on
//! loopback holds no plaintext of the files it carried.
//!
//! - the node's certificate is not valid for the name the agent expects;
//! - a client that offers only TLS 1.2 (`openssl s_client -tls1_2`);
//! - a plaintext client: raw HTTP, and a gRPC health check without TLS
//!   (Python's grpcio);
//! - a TLS-intercepting proxy with its own CA (Python's `ssl` server with
//!   a certificate of another `refuge certs init`): the agent refuses its
//!   certificate, and the proxy never reads a byte of application data;
//! - a recording TCP relay between agent and node during a real backup.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use refuge_tests::{Cluster, noise, run};

const MARKER: &[u8] = b"WIRE-MARKER-91be: the minister's itinerary ";

/// The audit records of event `auth_failed` whose detail contains `needle`.
fn refused(c: &Cluster, auditor: &Path, needle: &str) -> usize {
    c.audit(auditor)
        .iter()
        .filter(|e| {
            e["event"] == "auth_failed" && e["detail"].as_str().unwrap_or("").contains(needle)
        })
        .count()
}

fn wait_refused(c: &Cluster, auditor: &Path, needle: &str) {
    refuge_tests::wait_for(
        &format!("an audited refusal naming {needle:?}"),
        || refused(c, auditor, needle) > 0,
        || format!("{:#?}", c.audit(auditor)),
    );
}

#[test]
fn a_wrong_name_tls_1_2_and_plaintext_are_refused_in_the_handshake_and_audited() {
    let c = Cluster::start();
    let auditor = c.client(&["--role", "auditor", "--name", "assessor"]);
    let agent = c.default_agent(&[]);

    // The node's certificate names localhost and 127.0.0.1; an agent that
    // expects another name refuses it before sending anything.
    let wrong = c.path().join("wrong-name.toml");
    fs::write(
        &wrong,
        fs::read_to_string(&agent).unwrap().replace(
            "[node]\n",
            "[node]\nserver_name = \"backup.other-province.example\"\n",
        ),
    )
    .unwrap();
    let r = run(
        "refuge",
        c.path(),
        &["-c", wrong.to_str().unwrap(), "snapshots"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("not valid for the name \"backup.other-province.example\" (check `server_name` in [node])"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("IpAddress(127.0.0.1)"), "{}", r.stderr);

    // TLS 1.2 only: the node speaks TLS 1.3 and nothing else.
    let o = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", c.port()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("protocol version"), "{text}");
    wait_refused(&c, &auditor, "connection refused: peer is incompatible");

    // Plaintext: HTTP on the TLS port gets no answer but a closed
    // connection, and a gRPC client without TLS gets UNAVAILABLE.
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.windows(4).any(|w| w == b"HTTP"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let py = "import grpc,sys\n\
              from grpc_health.v1 import health_pb2, health_pb2_grpc\n\
              ch = grpc.insecure_channel(sys.argv[1])\n\
              try:\n    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=''), timeout=5)\n    print('SERVING?')\n\
              except grpc.RpcError as e:\n    print(e.code())\n";
    let o = Command::new("python3")
        .args(["-c", py, &format!("127.0.0.1:{}", c.port())])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("UNAVAILABLE"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_refused(&c, &auditor, "connection refused: received corrupt message");
    // The node still serves real clients.
    run(
        "refuge",
        c.path(),
        &["-c", agent.to_str().unwrap(), "snapshots"],
    )
    .ok();
}

#[test]
fn a_tls_intercepting_proxy_with_its_own_ca_gets_no_byte_of_the_backup() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("itinerary.txt"), MARKER.repeat(100)).unwrap();
    let agent = c.default_agent(&[("data", &src, "tree")]);

    // The interceptor: a TLS server with a certificate for 127.0.0.1 from
    // another CA, as a proxy that inspects traffic would present. It
    // records whether the handshake finished and what it read.
    let other = tempfile::tempdir().unwrap();
    run("refuge", other.path(), &["certs", "init", "certs"]).ok();
    let port = refuge_tests::free_local_port();
    let log = other.path().join("proxy.log");
    let py = format!(
        "import socket, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         ctx.load_cert_chain('{d}/certs/node.pem', '{d}/certs/node.key')\n\
         ctx.set_alpn_protocols(['h2'])\n\
         srv = socket.create_server(('127.0.0.1', {port}))\n\
         out = open('{log}', 'w')\n\
         print('ready', flush=True)\n\
         for _ in range(3):\n\
         \x20   conn, _ = srv.accept()\n\
         \x20   try:\n\
         \x20       tls = ctx.wrap_socket(conn, server_side=True)\n\
         \x20       data = tls.recv(65536)\n\
         \x20       out.write('read %d bytes\\n' % len(data))\n\
         \x20   except Exception as e:\n\
         \x20       out.write('handshake failed: %s\\n' % e)\n\
         \x20   out.flush()\n",
        d = other.path().display(),
        log = log.display(),
    );
    let mut proxy = Command::new("python3")
        .args(["-c", &py])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 5];
    proxy
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let via = c.path().join("via-proxy.toml");
    fs::write(
        &via,
        fs::read_to_string(&agent).unwrap().replace(
            &format!("127.0.0.1:{}", c.port()),
            &format!("127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    let r = run(
        "refuge-agent",
        c.path(),
        &["-c", via.to_str().unwrap(), "backup"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("not signed by the configured CA"),
        "{}",
        r.stderr
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
    let seen = fs::read_to_string(&log).unwrap_or_default();
    assert!(seen.contains("handshake failed"), "{seen}");
    assert!(!seen.contains("read "), "the interceptor read data: {seen}");
    // Nothing reached the node.
    assert!(c.snapshots(&agent).is_empty());
}

/// A TCP relay on 127.0.0.1 in front of the node that keeps every byte
/// it carries, both ways.
struct Recorder {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let all = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let all = all.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            all.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Recorder { port, bytes }
    }
}

#[test]
fn a_capture_of_a_backup_and_restore_on_loopback_holds_no_plaintext() {
    let c = Cluster::start();
    let src = c.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible around the marker, so that zstd cannot hide it by
    // chance either way: the marker is what must not appear.
    let mut body = noise(64 << 10, 3);
    body.extend(MARKER.repeat(200));
    body.extend(noise(64 << 10, 4));
    fs::write(src.join("itinerary-WIRENAME.txt"), &body).unwrap();
    let rec = Recorder::start(c.port());
    let agent = c.default_agent(&[("data", &src, "tree")]);
    let via = c.path().join("recorded.toml");
    fs::write(
        &via,
        fs::read_to_string(&agent).unwrap().replace(
            &format!("127.0.0.1:{}", c.port()),
            &format!("127.0.0.1:{}", rec.port),
        ),
    )
    .unwrap();
    run(
        "refuge-agent",
        c.path(),
        &["-c", via.to_str().unwrap(), "backup"],
    )
    .ok();
    let out = c.path().join("restored");
    c.restore_latest(&via, &out).ok();
    assert_eq!(fs::read(out.join("itinerary-WIRENAME.txt")).unwrap(), body);
    let seen = rec.bytes.lock().unwrap().clone();
    // The backup and the restore went through the relay.
    assert!(seen.len() > body.len(), "{} bytes recorded", seen.len());
    assert!(
        !seen.windows(16).any(|w| w == &MARKER[..16]),
        "the marker crossed in clear"
    );
    assert!(
        !seen.windows(8).any(|w| w == b"WIRENAME"),
        "a file name crossed in clear"
    );
    // TLS 1.3 records only after the two hellos: no HTTP/2 preface in clear.
    assert!(
        !seen.windows(8).any(|w| w == b"PRI * HT"),
        "HTTP/2 in clear"
    );
}
