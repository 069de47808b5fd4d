//! What the OpenAPI document says beyond what utoipa derives from the
//! handlers, applied to the generated document in one pass:
//!
//! - every operation documents the errors every handler can answer: 400
//!   (a malformed name, body or parameter), 401 (no valid token), 403 (a
//!   role that may not), 431 (a head over the listener's limit) and, under
//!   `/v1/functions/{name}`, 404;
//! - names follow `gust_core`'s rules (function, tenant, bucket and alias
//!   names are DNS-label-like: [`LABEL_PATTERN`]), and free text has the
//!   size limits the handlers enforce ([`crate::text`]);
//! - unsigned integers declare their real range (`minimum` 0, `maximum`
//!   the Rust type's) with the formats `uint32` / `uint64`, not `int32` /
//!   `int64`, whose ranges they do not have.
//!
//! The document is checked with a validator, and schemathesis is run
//! against a live server, by `.ci/openapi-check`.

use serde_json::{Map, Value, json};

use crate::text;

/// A function, tenant, bucket or alias name (`gust_core`'s `check_label`):
/// lowercase letters, digits and `-`, starting with a letter, not ending
/// with `-`, at most 63 characters.
pub(crate) const LABEL_PATTERN: &str = "^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$";
/// A token's id: the 12 hex digits after `gust_`.
const TOKEN_ID_PATTERN: &str = "^[0-9a-f]{12}$";

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// A string's constraints.
#[derive(Clone, Copy)]
enum Text {
    /// A name: [`LABEL_PATTERN`].
    Label,
    /// A name, or empty for the default (a bucket).
    LabelOrEmpty,
    /// A token id.
    TokenId,
    /// Free text of at most this many bytes.
    Max(usize),
    /// At least one byte, at most this many.
    NonEmptyMax(usize),
}

impl Text {
    fn apply(self, schema: &mut Map<String, Value>) {
        let (pattern, min, max) = match self {
            Text::Label => (Some(LABEL_PATTERN.to_string()), Some(1), 63),
            Text::LabelOrEmpty => (
                Some(format!(
                    "^(?:{})?$",
                    &LABEL_PATTERN[1..LABEL_PATTERN.len() - 1]
                )),
                None,
                63,
            ),
            Text::TokenId => (Some(TOKEN_ID_PATTERN.to_string()), Some(12), 12),
            Text::Max(max) => (None, None, max),
            Text::NonEmptyMax(max) => (None, Some(1), max),
        };
        if let Some(pattern) = pattern {
            schema.insert("pattern".into(), json!(pattern));
        }
        if let Some(min) = min {
            schema.insert("minLength".into(), json!(min));
        }
        schema.insert("maxLength".into(), json!(max));
    }
}

/// Parameters (path and query) by name; `id` depends on the path.
fn parameter_text(path: &str, name: &str) -> Option<Text> {
    Some(match name {
        "name" | "alias" | "bucket" | "on_success" | "on_failure" => Text::Label,
        "id" if path.starts_with("/v1/tenants/") => Text::Label,
        "id" if path.starts_with("/v1/tokens/") => Text::TokenId,
        "key" => Text::NonEmptyMax(gust_core::kv::MAX_KEY_BYTES),
        "path" => Text::Max(text::MAX_PATH_BYTES),
        "allowed_hosts" | "allow_internal_hosts" => Text::Max(text::MAX_ALLOWED_HOSTS_BYTES),
        "routes" => Text::Max(text::MAX_ROUTES_BYTES),
        "keep_alive" | "provisioned" | "canary" => Text::Max(text::MAX_SETTING_BYTES),
        _ => return None,
    })
}

/// Request bodies' string properties: (schema, property, constraint).
const BODY_TEXT: [(&str, &str, Text); 13] = [
    ("CreateFunction", "name", Text::Label),
    ("NewTenant", "id", Text::Label),
    (
        "NewToken",
        "description",
        Text::Max(text::MAX_DESCRIPTION_BYTES),
    ),
    ("NewTrigger", "bucket", Text::LabelOrEmpty),
    ("NewTrigger", "id", Text::Label),
    (
        "NewTrigger",
        "prefix",
        Text::Max(gust_core::kv::MAX_KEY_BYTES),
    ),
    ("NewTrigger", "path", Text::Max(text::MAX_PATH_BYTES)),
    ("NewSchedule", "id", Text::Label),
    (
        "NewSchedule",
        "expr",
        Text::NonEmptyMax(text::MAX_SCHEDULE_EXPR_BYTES),
    ),
    ("NewSchedule", "tz", Text::Max(text::MAX_TZ_BYTES)),
    ("NewSchedule", "path", Text::Max(text::MAX_PATH_BYTES)),
    (
        "NewVar",
        "value",
        Text::Max(gust_core::config::MAX_VALUE_BYTES),
    ),
    ("PricePlan", "id", Text::Max(text::MAX_PLAN_ID_BYTES)),
];

/// Finishes the document utoipa generated (see the module's documentation).
pub(crate) fn finish(mut doc: Value) -> Value {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                if let Some(operation) = operation.as_object_mut() {
                    constrain_parameters(path, operation);
                    document_errors(path, operation);
                    for (status, description) in operation_errors(method, path) {
                        if let Some(responses) = operation
                            .get_mut("responses")
                            .and_then(Value::as_object_mut)
                        {
                            responses
                                .entry(*status)
                                .or_insert_with(|| error_response(description));
                        }
                    }
                    binary_bodies(path, method, operation);
                }
            }
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (schema, property, constraint) in BODY_TEXT {
            if let Some(property) = schemas
                .get_mut(schema)
                .and_then(|s| s.pointer_mut(&format!("/properties/{property}")))
                .and_then(Value::as_object_mut)
            {
                constraint.apply(property);
            }
        }
    }
    unsigned_ranges(&mut doc);
    doc
}

fn constrain_parameters(path: &str, operation: &mut Map<String, Value>) {
    let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for parameter in parameters {
        let name = parameter["name"].as_str().unwrap_or_default().to_string();
        let Some(constraint) = parameter_text(path, &name) else {
            continue;
        };
        if let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) {
            constraint.apply(schema);
        }
    }
}

/// Bodies that are bytes, not JSON (a component, an event's data, a
/// key's value), are `string`/`binary`, not arrays of integers. An event's
/// data and a key's value may be empty; a component is also accepted as
/// `application/octet-stream`.
fn binary_bodies(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let binary = || json!({ "type": "string", "format": "binary" });
    let may_be_empty = matches!(
        (method, path),
        ("post", "/v1/functions/{name}/invocations") | ("put", "/v1/kv/{bucket}/keys/{key}")
    );
    if let Some(body) = operation
        .get_mut("requestBody")
        .and_then(Value::as_object_mut)
    {
        if let Some(content) = body.get_mut("content").and_then(Value::as_object_mut) {
            if let Some(wasm) = content.get("application/wasm").cloned() {
                content.entry("application/octet-stream").or_insert(wasm);
            }
            for (media, item) in content.iter_mut() {
                if media != "application/json" {
                    item["schema"] = binary();
                }
            }
        }
        if may_be_empty {
            body.insert("required".into(), json!(false));
        }
    }
    if let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    {
        for response in responses.values_mut() {
            if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) {
                for (media, item) in content.iter_mut() {
                    if media == "application/octet-stream" {
                        item["schema"] = binary();
                    }
                }
            }
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" }
            }
        }
    })
}

/// Errors only some operations answer, beyond what their handlers declare.
fn operation_errors(method: &str, path: &str) -> &'static [(&'static str, &'static str)] {
    match (method, path) {
        ("post", "/v1/functions/{name}/versions") => &[
            (
                "409",
                "A place another function claims, or a reservation that does not fit the node",
            ),
            (
                "429",
                "Over a tenant quota (functions, versions, storage, a function's memory)",
            ),
        ],
        ("post", "/v1/functions") => &[("429", "Over the tenant's `functions` quota")],
        ("post", "/v1/functions/{name}/invocations") => {
            &[("429", "Over the tenant's `event_backlog` quota")]
        }
        _ => &[],
    }
}

fn document_errors(path: &str, operation: &mut Map<String, Value>) {
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut errors = vec![
        (
            "400",
            "A malformed name, parameter or body, or a value past its limit; the message names it",
        ),
        (
            "401",
            "No token, or one that is not valid (unknown, revoked, expired)",
        ),
        ("403", "The token's role may not do this"),
        (
            "431",
            "The request's head (its URL and headers) is over the server's limit",
        ),
    ];
    if path.starts_with("/v1/functions/{name}") {
        errors.push(("404", "No such function"));
    }
    for (status, description) in errors {
        responses
            .entry(status)
            .or_insert_with(|| error_response(description));
    }
    // The listener answers it before the request reaches the API: in text.
    if let Some(head) = responses.get_mut("431") {
        head["content"] = json!({ "text/plain": { "schema": { "type": "string" } } });
    }
}

/// Whether a schema's `type` is (or includes) `integer`.
fn is_integer(schema: &Map<String, Value>) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "integer",
        Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
        _ => false,
    }
}

/// Every unsigned integer (utoipa: `minimum: 0` with format `int32`,
/// `int64` or none for `usize`) gets its real range and an unsigned format.
fn unsigned_ranges(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unsigned =
                is_integer(map) && map.get("minimum").and_then(Value::as_f64) == Some(0.0);
            if unsigned {
                match map.get("format").and_then(Value::as_str) {
                    // `usize` comes without a format: 64 bits on the server.
                    Some("int64") | None => {
                        map.insert("format".into(), json!("uint64"));
                        map.insert("maximum".into(), json!(u64::MAX));
                    }
                    Some("int32") => {
                        map.insert("format".into(), json!("uint32"));
                        map.insert("maximum".into(), json!(u32::MAX));
                    }
                    _ => {}
                }
            }
            for child in map.values_mut() {
                unsigned_ranges(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn document() -> Value {
        serde_json::from_str(&crate::openapi_json()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if METHODS.contains(&method.as_str()) {
                    all.push((path.clone(), method.clone(), operation.clone()));
                }
            }
        }
        all
    }

    #[test]
    fn parameters_are_where_they_are_sent() {
        let doc = document();
        for (path, method, operation) in operations(&doc) {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                let declared = parameter["in"].as_str().unwrap();
                assert_eq!(
                    declared,
                    if in_path { "path" } else { "query" },
                    "{method} {path}: parameter `{name}`"
                );
            }
        }
    }

    #[test]
    fn every_operation_documents_its_errors() {
        let doc = document();
        let operations = operations(&doc);
        assert!(operations.len() >= 40, "{}", operations.len());
        for (path, method, operation) in operations {
            assert!(
                operation["responses"]["431"]["content"]["text/plain"].is_object(),
                "{method} {path}: 431 is the listener's, in text"
            );
            for status in ["400", "401", "403", "431"] {
                let response = &operation["responses"][status];
                assert!(
                    response.is_object(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }

    #[test]
    fn names_have_their_patterns_and_text_its_limits() {
        let doc = document();
        let param = |path: &str, method: &str, name: &str| {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        for (path, method, name) in [
            ("/v1/functions/{name}", "get", "name"),
            ("/v1/kv/{bucket}/keys", "get", "bucket"),
            ("/v1/tenants/{id}/quotas", "put", "id"),
            ("/v1/functions/{name}/aliases/{alias}", "put", "alias"),
            ("/v1/functions/{name}/versions", "post", "on_success"),
        ] {
            assert_eq!(
                param(path, method, name)["pattern"],
                LABEL_PATTERN,
                "{method} {path}: {name}"
            );
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["CreateFunction"]["properties"]["name"]["pattern"],
            LABEL_PATTERN
        );
        assert_eq!(
            schemas["NewToken"]["properties"]["description"]["maxLength"],
            text::MAX_DESCRIPTION_BYTES
        );
        assert_eq!(
            param("/v1/functions/{name}/invocations", "post", "path")["maxLength"],
            text::MAX_PATH_BYTES
        );
    }

    #[test]
    fn byte_bodies_are_binary_and_may_be_empty_where_the_server_says() {
        let doc = document();
        let deploy = &doc["paths"]["/v1/functions/{name}/versions"]["post"]["requestBody"];
        for media in ["application/wasm", "application/octet-stream"] {
            assert_eq!(
                deploy["content"][media]["schema"]["format"], "binary",
                "{deploy}"
            );
        }
        assert_eq!(deploy["required"], true);
        for status in ["409", "429"] {
            assert!(
                doc["paths"]["/v1/functions/{name}/versions"]["post"]["responses"][status]
                    .is_object(),
                "deploy documents {status}"
            );
        }
        let event = &doc["paths"]["/v1/functions/{name}/invocations"]["post"]["requestBody"];
        assert_eq!(event["required"], false, "{event}");
        assert_eq!(
            doc["paths"]["/v1/tokens/{id}"]["delete"]["responses"]["409"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }

    #[test]
    fn unsigned_integers_declare_their_range() {
        let doc = document();
        let expires = &doc["components"]["schemas"]["NewToken"]["properties"]["expires_in_s"];
        assert_eq!(expires["format"], "uint64", "{expires}");
        assert_eq!(expires["minimum"], 0, "{expires}");
        assert_eq!(expires["maximum"], u64::MAX, "{expires}");
        let limit = doc["paths"]["/v1/functions/{name}/invocations"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap()["schema"]
            .clone();
        assert_eq!(limit["maximum"], u64::MAX, "{limit}");
        // No integer anywhere keeps a signed format with an unsigned range.
        fn walk(value: &Value, at: &str) {
            match value {
                Value::Object(map) => {
                    if is_integer(map) && map.get("minimum").and_then(Value::as_f64) == Some(0.0) {
                        let format = map.get("format").and_then(Value::as_str);
                        assert!(!matches!(format, Some("int32" | "int64")), "{at}: {value}");
                    }
                    for (key, child) in map {
                        walk(child, &format!("{at}/{key}"));
                    }
                }
                Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        walk(child, &format!("{at}/{i}"));
                    }
                }
                _ => {}
            }
        }
        walk(&doc, "");
    }
}
