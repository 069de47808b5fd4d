//! {{name}}: a Gust function. It answers every request with a greeting,
//! taken from the `GREETING` variable (`[env]` in gust.toml, or
//! `gust config set {{name}} GREETING=...`), and the path it was called on.
//!
//! Build and deploy: `gust deploy` here; while editing: `gust dev`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Function;

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let path = request.path_with_query().unwrap_or_default();
        let text = format!("{greeting} from {{name}}! You asked for {path}\n");

        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("a static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("the stream is taken once");
        out.write_all(text.as_bytes()).expect("write the body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish the body");
    }
}

wasip2::http::proxy::export!(Function);
