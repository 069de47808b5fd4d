//! Webhook sources: signed deliveries queued once, unsigned ones refused.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_queued_only_when_signed_and_once_per_delivery() {
    let server = Server::start();
    deploy_collector(&server, "hooks");
    let github = server.gust_json(&[
        "source",
        "add",
        "hooks",
        "--kind",
        "webhook",
        "--style",
        "github",
        "--secret",
        "gh-secret",
        "--path",
        "/collect",
        "--id",
        "gh",
    ]);
    let hook_url = github["webhook_url"].as_str().unwrap().to_string();
    assert_eq!(
        hook_url,
        format!("{}/_gust/webhooks/default/hooks/gh", server.url)
    );
    // The secret is never shown again, in any listing.
    let listed = server.gust(&["source", "ls", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.contains("gh-secret"), "{listed}");
    assert!(listed.contains("\"waiting\""), "{listed}");

    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!("sha256={}", hmac_hex(b"gh-secret", body));
    let post = |signature: Option<String>, delivery: &str, body: &'static [u8]| {
        let mut request = server
            .http
            .post(&hook_url)
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, text) = post(Some(signature.clone()), "d-1", body).await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("\"duplicate\":false"), "{text}");
    // GitHub redelivers with the same delivery id: queued once.
    let (status, text) = post(Some(signature.clone()), "d-1", body).await;
    assert_eq!(
        (status, text.contains("\"duplicate\":true")),
        (202, true),
        "{text}"
    );
    // Unsigned, signed with another secret, or over another body: 401.
    let (status, text) = post(None, "d-2", body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("X-Hub-Signature-256"), "{text}");
    let wrong = format!("sha256={}", hmac_hex(b"other", body));
    assert_eq!(post(Some(wrong), "d-3", body).await.0, 401);
    assert_eq!(post(Some(signature.clone()), "d-4", b"{}").await.0, 401);

    // Stripe style: the timestamp is signed, and an old one is refused.
    server.gust_json(&[
        "source", "add", "hooks", "--kind", "webhook", "--style", "stripe", "--secret", "whsec_1",
        "--path", "/collect", "--id", "stripe",
    ]);
    let stripe_url = format!("{}/_gust/webhooks/default/hooks/stripe", server.url);
    let event = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    let stripe = |t: u64| {
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(event);
        let header = format!("t={t},v1={}", hmac_hex(b"whsec_1", &signed));
        let request = server
            .http
            .post(&stripe_url)
            .header("stripe-signature", header)
            .body(&event[..]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let now = crate::harness::now_ms() / 1000;
    assert_eq!(stripe(now).await, 202);
    assert_eq!(stripe(now - 3_600).await, 401, "outside the replay window");

    // No such source, wrong method, over the size limit.
    let nowhere = format!("{}/_gust/webhooks/default/hooks/nope", server.url);
    assert_eq!(
        server
            .http
            .post(&nowhere)
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        server.http.get(&hook_url).send().await.unwrap().status(),
        405
    );
    let big = vec![b'x'; (1 << 20) + 1];
    assert_eq!(
        server
            .http
            .post(&hook_url)
            .body(big)
            .send()
            .await
            .unwrap()
            .status(),
        413
    );

    let records =
        collected_until(&server, "hooks", Duration::from_secs(20), |r| r.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = if records.len() == 2 {
        collected(&server, "hooks").await
    } else {
        records
    };
    assert_eq!(records.len(), 2, "one event per delivery: {records:?}");
    let push = records
        .iter()
        .find(|r| r.id == "d-1")
        .expect("the GitHub delivery");
    assert_eq!(push.ty, "dev.gust.webhook.github");
    assert_eq!(push.subject, "push");
    assert_eq!(push.body, r#"{"ref":"refs/heads/main"}"#);
    let paid = records
        .iter()
        .find(|r| r.id == "evt_1")
        .expect("the Stripe event");
    assert_eq!(paid.subject, "invoice.paid");

    // Removed: its endpoint answers 404.
    assert!(
        server
            .gust(&["source", "rm", "hooks", "gh"])
            .status
            .success()
    );
    assert_eq!(post(Some(signature), "d-5", body).await.0, 404);

    // The delivery policy, through a webhook of its own.
    server.gust_json(&[
        "source",
        "add",
        "hooks",
        "--kind",
        "webhook",
        "--secret",
        "p-secret",
        "--path",
        POLICY_PATH,
        "--id",
        "policy",
    ]);
    let policy_url = format!("{}/_gust/webhooks/default/hooks/policy", server.url);
    retried_dead_lettered_and_redriven(&server, "hooks", |tag| {
        let body = format!("{{\"tag\":\"{tag}\"}}");
        let request = server
            .http
            .post(&policy_url)
            .header("x-github-event", "push")
            .header("x-github-delivery", tag)
            .header(
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex(b"p-secret", body.as_bytes())),
            )
            .body(body);
        async move {
            assert_eq!(request.send().await.unwrap().status(), 202);
        }
    })
    .await;

    // A client's event that calls itself a webhook's is metered as what it
    // is, an event; the webhook's own deliveries as webhooks.
    let response = server
        .http
        .post(format!("{}/hooks/collect", server.url))
        .header("Gust-Invocation-Type", "Event")
        .header("ce-type", "dev.gust.webhook.github")
        .body("spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let spoofed = body["invocation_id"].as_str().unwrap().to_string();
    let triggers = Server::eventually(Duration::from_secs(10), || async {
        let out = server.gust(&["usage", "--export", "jsonl"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let of = |id: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|r| r["invocation_id"] == id)
                .map(|r| r["trigger"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        let spoofed = of(&spoofed);
        let pushed = text.lines().any(|l| l.contains("\"trigger\":\"webhook\""));
        (!spoofed.is_empty() && pushed).then_some(spoofed)
    })
    .await
    .expect("the spoofed event and the webhooks metered");
    assert_eq!(triggers, ["event"]);
}
