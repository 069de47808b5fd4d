//! {{name}}-front: the application's public function. It calls
//! `{{name}}-back` (an in-process call to `http://gust.internal/…`, always
//! the back of the same release) and answers with both greetings.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Function;

/// GETs `path` of `{{name}}-back`; its body, or what went wrong.
fn call_back(path: &str) -> Result<String, String> {
    let request = OutgoingRequest::new(Fields::new());
    let built = request
        .set_scheme(Some(&Scheme::Http))
        .and(request.set_authority(Some("gust.internal")))
        .and(request.set_path_with_query(Some(&format!("/{{name}}-back{path}"))));
    built.map_err(|()| "the request could not be made".to_string())?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        _ => return Err("no answer".into()),
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body".to_string())?;
    let mut stream = body.stream().map_err(|()| "no body stream".to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(text)
    } else {
        Err(format!("status {status}: {text}"))
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let path = request.path_with_query().unwrap_or_default();
        let back = call_back(&path).unwrap_or_else(|e| format!("(back failed: {e})"));
        let text = format!("{greeting} from {{name}}-front; {back}\n");
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
