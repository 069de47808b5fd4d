//! {{name}}-back: the application's inner function. `{{name}}-front`
//! calls it at `http://gust.internal/{{name}}-back/…`; it is private, so
//! no one else reaches it without a token.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Function;

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let path = request.path_with_query().unwrap_or_default();
        let text = format!("{greeting} from {{name}}-back, asked for {path}");
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("the stream is taken once");
        out.write_all(text.as_bytes()).expect("write the body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish the body");
    }
}

wasip2::http::proxy::export!(Function);
