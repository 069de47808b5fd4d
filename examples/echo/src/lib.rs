//! Echo: answers with the request's method, path, headers and body size, as
//! plain text, one `name: value` per line. Handy to see what a function
//! receives from the gateway.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut text = format!(
            "method: {}\npath: {}\n",
            method_name(request.method()),
            request.path_with_query().unwrap_or_default()
        );
        for (name, value) in request.headers().entries() {
            text.push_str(&format!(
                "header: {name}: {}\n",
                String::from_utf8_lossy(&value)
            ));
        }
        let body_size = request.consume().map(read_all).unwrap_or(0);
        text.push_str(&format!("body-size: {body_size}\n"));

        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream is taken once");
        out.write_all(text.as_bytes()).expect("write body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

/// Reads the whole body and returns its length in bytes.
fn read_all(body: IncomingBody) -> usize {
    let mut total = 0;
    if let Ok(stream) = body.stream() {
        let mut stream = stream;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
    }
    total
}

wasip2::http::proxy::export!(Echo);
