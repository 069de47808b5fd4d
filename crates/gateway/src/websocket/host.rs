//! The host API on `gust.internal/_ws/<id>`: what any of a tenant's
//! functions may do to the tenant's connections held on this node.

use super::*;

/// The host API, `http://gust.internal/_ws/<id>` from any of `tenant`'s
/// functions: POST sends the body (binary when its content type is
/// `application/octet-stream`, text otherwise), DELETE closes
/// (`?code=N&reason=R`), GET describes. Another tenant's connection, or
/// one closed, is 404.
pub(crate) async fn command(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    request: Request<gust_runtime::CallBody>,
) -> Response<GatewayBody> {
    let path = request.uri().path();
    let conn_id = path.trim_start_matches(PREFIX).to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let found = {
        let open = shared.sockets.lock();
        open.conns
            .get(&conn_id)
            .filter(|c| c.tenant == *tenant)
            .map(|c| {
                let queued = c.queued.clone();
                (
                    c.commands.clone(),
                    c.max_message,
                    c.function.clone(),
                    c.opened,
                    queued,
                )
            })
    };
    let Some((commands, max_message, function, opened, queued)) = found else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("no open WebSocket connection `{conn_id}` of this tenant on this node"),
        );
    };
    let command = match *request.method() {
        Method::GET => {
            let body = serde_json::json!({
                "id": conn_id,
                "function": function,
                "open_ms": opened.elapsed().as_millis() as u64,
            });
            return plain(StatusCode::OK, &body.to_string());
        }
        Method::DELETE => {
            let param = |name: &str| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            };
            let code = param("code")
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(1000);
            if !(code == 1000 || (3000..5000).contains(&code)) {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "a close code is 1000 or between 3000 and 4999",
                );
            }
            let Some(reason) = percent_decoded(&param("reason").unwrap_or_default()) else {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "the close reason is not percent-encoded UTF-8",
                );
            };
            Command::Close(code, short(&reason))
        }
        Method::POST | Method::PUT => {
            let binary = request
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
            let Some(body) = read_capped(request.into_body(), max_message).await else {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a message to this connection is at most {max_message} bytes"),
                );
            };
            if binary {
                Command::Send(Message::Binary(body))
            } else {
                match String::from_utf8(body.to_vec()) {
                    Ok(text) => Command::Send(Message::Text(text.into())),
                    Err(_) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "a text message is UTF-8: send bytes as application/octet-stream",
                        );
                    }
                }
            }
        }
        _ => {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST sends a message, DELETE closes, GET describes",
            );
        }
    };
    let len = match &command {
        Command::Send(message) => message.len() as u64,
        Command::Close(..) => 0,
    };
    let waiting = queued.fetch_add(len, Ordering::Relaxed);
    if len > 0 && waiting + len > queue_bytes(max_message) {
        queued.fetch_sub(len, Ordering::Relaxed);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the connection's client is not reading fast enough; retry shortly",
        );
    }
    match commands.try_send(command) {
        Ok(()) => plain(StatusCode::ACCEPTED, ""),
        Err(mpsc::error::TrySendError::Full(_)) => {
            queued.fetch_sub(len, Ordering::Relaxed);
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the connection's client is not reading fast enough; retry shortly",
            )
        }
        Err(mpsc::error::TrySendError::Closed(_)) => plain(
            StatusCode::NOT_FOUND,
            &format!("the WebSocket connection `{conn_id}` is closing"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<GatewayBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// `%XX`-decoded (a query parameter); `None` for a bad escape or non-UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn close_reasons_are_percent_decoded() {
        assert_eq!(percent_decoded("a%20b+c%C3%A9").as_deref(), Some("a b cé"));
        assert_eq!(percent_decoded("bad%2"), None);
        assert_eq!(percent_decoded("%FF"), None);
    }
}
