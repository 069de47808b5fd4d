//! TLS on both listeners, with a certificate from files.

use std::process::Command;

use crate::harness::{Server, guests};

/// Runs `openssl` with space-separated arguments (the paths hold no spaces).
fn openssl(args: &str) {
    let made = Command::new("openssl")
        .args(args.split(' '))
        .output()
        .expect("openssl makes the test certificates");
    assert!(
        made.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_listeners_speak_tls_with_the_given_certificate() {
    // A private CA and a server certificate it signed, as an operator
    // would make them.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let (ca_key, csr, ext) = (path("ca.key"), path("leaf.csr"), path("leaf.ext"));
    openssl(&format!(
        "req -x509 {ec} -days 1 -subj /CN=gust-test-ca -keyout {ca_key} -out {ca}"
    ));
    openssl(&format!(
        "req {ec} -subj /CN=localhost -keyout {key} -out {csr}"
    ));
    openssl(&format!(
        "x509 -req -days 1 -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -extfile {ext} -out {cert}"
    ));

    let server = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.url.starts_with("https://") && server.api.starts_with("https://"));

    // The CLI, trusting the certificate through GUST_CA_CERT.
    let gust = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gust"))
            .args(args)
            .env("GUST_API", &server.api)
            .env("GUST_TOKEN", &server.token)
            .env("GUST_CA_CERT", &ca)
            .output()
            .unwrap()
    };
    let wasm = guests().testbed.to_str().unwrap().to_string();
    let deployed = gust(&["deploy", "tb", &wasm, "--public", "--json"]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&deployed.stdout).unwrap();
    assert!(info["url"].as_str().unwrap().starts_with("https://"));
    let called = gust(&["invoke", "tb"]);
    assert_eq!(String::from_utf8_lossy(&called.stdout).trim(), "testbed ok");
    // Without trusting it, the CLI refuses the connection.
    let untrusted = Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["ls"])
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(1));

    // curl over TLS to the data plane; plain HTTP to a TLS port gets no answer.
    let curl = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .arg(format!("{}/tb/", server.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "testbed ok");
    let plain = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
        ])
        .arg(server.url.replace("https://", "http://") + "/tb/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
}
