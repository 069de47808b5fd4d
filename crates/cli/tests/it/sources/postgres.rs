//! PostgreSQL change data capture: order per row, no loss across faults.

use super::*;

/// Restarts the machine's PostgreSQL (`pg_ctlcluster … restart`: every
/// connection drops, replication slots stay) and waits for it to answer.
/// `false` after saying why it could not (in CI: a failure).
fn restart_postgres() -> bool {
    let clusters = Command::new("pg_lsclusters").arg("-h").output();
    let cluster = clusters.ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut fields = text.lines().next()?.split_whitespace();
        Some((fields.next()?.to_string(), fields.next()?.to_string()))
    });
    let restarted = cluster.is_some_and(|(version, name)| {
        Command::new("pg_ctlcluster")
            .args([version.as_str(), name.as_str(), "restart"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !restarted {
        let why = "`pg_ctlcluster … restart` failed (not installed, or not allowed)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped the database restart: {why}");
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", 5432)).is_err()
        || !Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-Atc",
                "SELECT 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_row_changes_arrive_in_order_per_row_and_survive_a_kill_9_and_a_restart() {
    let _machine = MACHINE_SERVICES.lock().await;
    if service("PostgreSQL", 5432).is_none() || installed("psql").is_none() {
        return;
    }
    let level = psql("SHOW wal_level");
    if level != "logical" {
        let why = format!("PostgreSQL has wal_level = {level}, not logical (.ci/run sets it)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let tag = format!("{}_{}", std::process::id(), crate::harness::now_ms());
    let (table, publication, role) = (
        format!("gust_t_{tag}"),
        format!("gust_p_{tag}"),
        format!("gust_r_{tag}"),
    );
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, note text); ALTER TABLE {table} REPLICA IDENTITY FULL; CREATE PUBLICATION {publication} FOR TABLE {table}; CREATE ROLE {role} LOGIN"
    ));
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let source_id = format!("cdc-{}", tag.replace('_', "-"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "rows");
    // What the database lacks is said when the source is added.
    let refused = server.gust(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        "nope",
    ]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("no publication `nope`"), "{why}");
    let norepl = format!("postgres://{role}@127.0.0.1:5432/test");
    let refused = server.gust(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        &norepl,
        "--publication",
        &publication,
    ]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("WITH REPLICATION"), "{why}");
    server.gust_json(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        &publication,
        "--path",
        "/collect",
        "--id",
        &source_id,
    ]);
    let slot = format!("gust_rows_{}", source_id.replace('-', "_"));
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "1",
        "the slot is made when the source is added"
    );
    // Twenty rows, each updated three times, five deleted: 85 changes.
    let mut sql = String::new();
    for id in 1..=20 {
        sql.push_str(&format!("INSERT INTO {table} VALUES ({id}, 'v0');"));
    }
    psql(&sql);
    for v in 1..=3 {
        psql(&format!("UPDATE {table} SET note = 'v{v}'"));
    }
    psql(&format!("DELETE FROM {table} WHERE id <= 5"));
    let records =
        collected_until(&server, "rows", Duration::from_secs(30), |r| r.len() >= 85).await;
    assert_eq!(records.len(), 85);
    for id in 1..=20 {
        let subject = format!("public.{table}/{id}");
        let ops: Vec<String> = records
            .iter()
            .filter(|r| r.subject == subject)
            .map(|r| {
                let data: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                let note = data["new"]["note"].as_str().unwrap_or("-").to_string();
                format!("{}:{note}", r.ty.trim_start_matches("dev.gust.postgres."))
            })
            .collect();
        let mut expected = vec!["insert:v0", "update:v1", "update:v2", "update:v3"];
        if id <= 5 {
            expected.push("delete:-");
        }
        assert_eq!(ops, expected, "row {id}");
    }
    let update = records
        .iter()
        .find(|r| r.ty == "dev.gust.postgres.update")
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(&update.body).unwrap();
    assert_eq!(data["table"], format!("public.{table}"));
    assert!(
        data["old"]["note"].is_string() && data["key"]["id"].is_i64(),
        "{data}"
    );

    // Rows committed while gust is killed and started again: none lost.
    let writer = {
        let table = table.clone();
        std::thread::spawn(move || {
            for batch in 0..28 {
                let from = 21 + batch * 10;
                psql(&format!(
                    "INSERT INTO {table} SELECT g, 'bulk' FROM generate_series({from}, {}) g",
                    from + 9
                ));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    collected_until(&server, "rows", Duration::from_secs(30), |r| r.len() >= 120).await;
    server.kill9();
    writer.join().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let records = collected_until(&server, "rows", Duration::from_secs(60), |r| {
        let inserted: BTreeSet<&str> = r
            .iter()
            .filter(|c| c.ty == "dev.gust.postgres.insert")
            .map(|c| c.subject.as_str())
            .collect();
        inserted.len() >= 300
    })
    .await;
    let mut by_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &records {
        by_id.entry(r.id.as_str()).or_default().push(r.attempt);
    }
    assert_eq!(by_id.len(), 85 + 280, "one event per change");
    assert_at_most_a_few_queued_twice(&records, 10);

    // The database restarted between writes: the source reconnects to its
    // slot by itself and loses none.
    let insert = |from: u32, to: u32| {
        psql(&format!(
            "INSERT INTO {table} SELECT g, 'again' FROM generate_series({from}, {to}) g"
        ))
    };
    insert(301, 320);
    if restart_postgres() {
        insert(321, 340);
        collected_until(&server, "rows", Duration::from_secs(60), |r| {
            let inserted: BTreeSet<&str> = r
                .iter()
                .filter(|c| c.ty == "dev.gust.postgres.insert")
                .map(|c| c.subject.as_str())
                .collect();
            inserted.len() >= 340
        })
        .await;
    }

    // The delivery policy, through a source of its own.
    let (policy_table, policy_publication, policy_id) = (
        format!("gust_pt_{tag}"),
        format!("gust_pp_{tag}"),
        format!("pol-{}", tag.replace('_', "-")),
    );
    psql(&format!(
        "CREATE TABLE {policy_table} (id int PRIMARY KEY, note text); CREATE PUBLICATION {policy_publication} FOR TABLE {policy_table}"
    ));
    server.gust_json(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        &policy_publication,
        "--path",
        POLICY_PATH,
        "--id",
        &policy_id,
    ]);
    let written = std::sync::atomic::AtomicU32::new(0);
    retried_dead_lettered_and_redriven(&server, "rows", |tag| {
        let n = written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        psql(&format!("INSERT INTO {policy_table} VALUES ({n}, '{tag}')"));
        async {}
    })
    .await;
    assert!(
        server
            .gust(&["source", "rm", "rows", &policy_id])
            .status
            .success()
    );

    // Removed: its slot goes too (a slot nobody reads keeps WAL).
    assert!(
        server
            .gust(&["source", "rm", "rows", &source_id])
            .status
            .success()
    );
    let gone = Server::eventually(Duration::from_secs(20), || async {
        (psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) == "0")
            .then_some(())
    })
    .await;
    let policy_slot = format!("gust_rows_{}", policy_id.replace('-', "_"));
    Server::eventually(Duration::from_secs(20), || async {
        (psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{policy_slot}'"
        )) == "0")
            .then_some(())
    })
    .await;
    psql(&format!(
        "DROP PUBLICATION {publication}, {policy_publication}; DROP TABLE {table}, {policy_table}; DROP ROLE {role}"
    ));
    assert!(gone.is_some(), "the slot was not dropped");
}
