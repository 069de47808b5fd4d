//! Sources over TLS: every kind reaches its broker with the source's CA, and
//! a certificate that cannot be checked is refused when the source is added.

use super::*;

/// A private CA and a certificate for 127.0.0.1 it signed (made with the
/// machine's `openssl`), readable by a broker that drops its privileges.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Option<Certs> {
        let openssl = installed("openssl")?;
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=gust-test-ca",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &key,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        use std::os::unix::fs::PermissionsExt as _;
        let open = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        open(dir.path(), 0o777);
        for file in ["ca.pem", "server.pem", "server.key"] {
            open(&dir.path().join(file), 0o644);
        }
        Some(Certs { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }
}

/// `source add` of `kind` to function `secure`, with `--ca-file` when given.
fn add_tls_source(
    server: &Server,
    kind: &str,
    url: &str,
    rest: &[&str],
    ca: Option<&str>,
) -> std::process::Output {
    let mut args = vec![
        "source", "add", "secure", "--kind", kind, "--url", url, "--path", "/collect",
    ];
    args.extend_from_slice(rest);
    if let Some(ca) = ca {
        args.extend_from_slice(&["--ca-file", ca]);
    }
    server.gust(&args)
}

/// A source over TLS: refused without the CA (with the certificate's
/// reason), added with it.
fn refused_without_the_ca_then_added_with_it(
    server: &Server,
    kind: &str,
    url: &str,
    rest: &[&str],
    ca: &str,
) {
    let refused = add_tls_source(server, kind, url, rest, None);
    assert_refused_for_its_certificate(&refused, &format!("{url} without the CA"));
    assert_added(&add_tls_source(server, kind, url, rest, Some(ca)), url);
}

/// Refused, with a certificate's reason.
fn assert_refused_for_its_certificate(out: &std::process::Output, what: &str) {
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: added");
    assert!(why.contains("certificate"), "{what}: {why}");
}

/// Added: its JSON.
fn assert_added(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_reach_brokers_over_tls_and_refuse_a_certificate_they_cannot_check() {
    let _machine = MACHINE_SERVICES.lock().await;
    let Some(certs) = Certs::new() else {
        return;
    };
    let (ca, cert, key) = (
        certs.path("ca.pem"),
        certs.path("server.pem"),
        certs.path("server.key"),
    );
    let server = Server::start();
    deploy_collector(&server, "secure");
    // Kept to the end, when every source must still be connected.
    let mut brokers = Vec::new();
    let mut amqp_queue_left = None;
    let arrives = |tag: &'static str| {
        let server = &server;
        async move {
            collected_until(server, "secure", Duration::from_secs(30), |r| {
                r.iter().any(|c| c.body.contains(tag))
            })
            .await;
        }
    };

    // MQTT: mosquitto with a TLS listener only.
    let (Some(mosquitto), Some(_)) = (installed("mosquitto"), installed("mosquitto_pub")) else {
        return;
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"),
    )
    .unwrap();
    brokers.push(Broker::start(
        vec![mosquitto, "-c".into(), conf.to_string_lossy().into_owned()],
        port,
        dir,
    ));
    let url = format!("mqtts://127.0.0.1:{port}");
    let topic = ["--topic", "secure/#", "--qos", "1"];
    refused_without_the_ca_then_added_with_it(&server, "mqtt", &url, &topic, &ca);
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cafile",
            &ca,
            "-q",
            "1",
            "-t",
            "secure/x",
            "-m",
            "over-mqtts",
        ])
        .status()
        .unwrap();
    assert!(published.success());
    arrives("over-mqtts").await;
    let mut running = 1;

    // NATS: a server that takes TLS only.
    if let Some(nats) = gust_store_nats::testkit::require() {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let command = [
            nats.to_string_lossy().as_ref(),
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ]
        .map(str::to_string)
        .to_vec();
        brokers.push(Broker::start(command, port, dir));
        let url = format!("tls://127.0.0.1:{port}");
        let subject = ["--topic", "secure", "--id", "nats"];
        refused_without_the_ca_then_added_with_it(&server, "nats", &url, &subject, &ca);
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone().into())
            .require_tls(true)
            .connect(&url)
            .await
            .unwrap();
        // Core NATS: what is published once the source is connected.
        assert!(
            connected(&server, "secure", "nats").await,
            "the NATS source connects over TLS"
        );
        client
            .publish("secure", "over-nats-tls".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        arrives("over-nats-tls").await;
        running += 1;
    }

    // Redis: TLS port only.
    if let Some(redis_server) = installed("redis-server") {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let command = [
            redis_server.as_str(),
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().to_string_lossy(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ]
        .map(str::to_string)
        .to_vec();
        brokers.push(Broker::start(command, port, dir));
        let url = format!("rediss://127.0.0.1:{port}");
        let stream = ["--stream", "secure", "--id", "redis"];
        refused_without_the_ca_then_added_with_it(&server, "redis", &url, &stream, &ca);
        let added = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &ca,
                "-p",
                &port.to_string(),
                "XADD",
                "secure",
                "*",
                "msg",
                "over-rediss",
            ])
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
        arrives("over-rediss").await;
        running += 1;
    }

    // RabbitMQ: the machine's broker behind a TLS terminator (socat).
    if service("RabbitMQ", 5672).is_some()
        && let Some(socat) = installed("socat")
    {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={cert},key={key}"
        );
        brokers.push(Broker::start(
            vec![socat, listen, "TCP:127.0.0.1:5672".into()],
            port,
            dir,
        ));
        let channel = amqp_channel("amqp://guest:guest@127.0.0.1:5672/%2f").await;
        let queue = amqp_queue(&channel, "gust-tls").await;
        let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
        let rest = ["--queue", queue.as_str(), "--id", "amqp"];
        refused_without_the_ca_then_added_with_it(&server, "amqp", &url, &rest, &ca);
        amqp_publish_one(&channel, &queue, "over-amqps", "amqps-1").await;
        arrives("over-amqps").await;
        running += 1;
        amqp_queue_left = Some((channel, queue));
    }

    // PostgreSQL: the machine's server with its own (self-signed) certificate.
    if service("PostgreSQL", 5432).is_some()
        && installed("psql").is_some()
        && psql("SHOW wal_level") == "logical"
    {
        let own = psql("SHOW ssl_cert_file");
        assert_eq!(psql("SHOW ssl"), "on", "PostgreSQL without TLS");
        let tag = format!("{}_{}", std::process::id(), crate::harness::now_ms());
        let (table, publication) = (format!("gust_tls_{tag}"), format!("gust_tlsp_{tag}"));
        psql(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, note text); CREATE PUBLICATION {publication} FOR TABLE {table}"
        ));
        let id = format!("pg-{}", tag.replace('_', "-"));
        let base = "postgres://postgres@127.0.0.1:5432/test";
        let rest = ["--publication", publication.as_str(), "--id", id.as_str()];
        // Its certificate names the machine, not 127.0.0.1: verify-full refuses it.
        let full = format!("{base}?sslmode=verify-full");
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &full, &rest, Some(&own)),
            "verify-full",
        );
        let require = format!("{base}?sslmode=require");
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &require, &rest, None),
            "require without the CA",
        );
        let chain = format!("{base}?sslmode=verify-ca");
        // verify-ca trusts the CA given alone: another CA's is refused.
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &chain, &rest, Some(&ca)),
            "verify-ca with another CA",
        );
        assert_added(
            &add_tls_source(&server, "postgres", &chain, &rest, Some(&own)),
            "verify-ca",
        );
        psql(&format!(
            "INSERT INTO {table} VALUES (1, 'over-postgres-tls')"
        ));
        arrives("over-postgres-tls").await;
        let ssl = psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid WHERE s.ssl AND r.application_name = 'gust'",
        );
        assert_ne!(ssl, "0", "the replication connection is not over TLS");
        assert!(
            server
                .gust(&["source", "rm", "secure", &id])
                .status
                .success()
        );
        let slot = format!("gust_secure_{}", id.replace('-', "_"));
        Server::eventually(Duration::from_secs(20), || async {
            (psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            )) == "0")
                .then_some(())
        })
        .await;
        psql(&format!(
            "DROP PUBLICATION {publication}; DROP TABLE {table}"
        ));
    }
    // Every source still connected, over TLS.
    let listed = server.gust_json(&["source", "ls", "secure"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), running, "{listed:?}");
    for source in listed {
        assert_eq!(source["status"]["state"], "connected", "{source}");
    }
    if let Some((channel, queue)) = amqp_queue_left {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
}
