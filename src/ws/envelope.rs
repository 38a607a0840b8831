//! The sysadm-style envelope: `{"namespace","name","id","args"}` in, `response`/`error` out.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;

/// A request read off the wire. `args` is the whole object when the envelope has no `args`
/// (sysadm's server and Qt client behave so).
#[derive(Debug)]
pub struct Request {
    pub namespace: String,
    pub name: String,
    pub id: Value,
    pub args: Value,
}

/// A request that could not be read; carries what could be read so the error can echo it.
#[derive(Debug)]
pub struct BadRequest {
    pub namespace: Option<String>,
    pub id: Value,
    pub error: Error,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request, BadRequest> {
    let value: Value = serde_json::from_str(text).map_err(|e| BadRequest {
        namespace: None,
        id: Value::Null,
        error: Error::bad_request(format!("Malformed JSON: {e}.")),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(BadRequest {
            namespace: None,
            id: Value::Null,
            error: Error::bad_request("A request must be a JSON object."),
        });
    };
    let id = match obj.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let namespace = match obj.get("namespace") {
        Some(Value::String(ns)) => Some(ns.clone()),
        _ => None,
    };
    let fail = |namespace: Option<String>, id: Value, msg: &str| BadRequest {
        namespace,
        id,
        error: Error::bad_request(msg),
    };
    if id.is_null() {
        return Err(fail(namespace, id, "`id` must be a string or a number."));
    }
    let Some(namespace) = namespace else {
        return Err(fail(None, id, "`namespace` must be a string."));
    };
    let name = match obj.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(fail(Some(namespace), id, "`name` must be a string.")),
    };
    let args = obj.remove("args").unwrap_or(Value::Object(obj));
    Ok(Request {
        namespace,
        name,
        id,
        args,
    })
}

#[derive(Serialize)]
struct Envelope<'a> {
    namespace: &'a str,
    name: &'a str,
    id: &'a Value,
    args: &'a Value,
}

fn render(namespace: &str, name: &str, id: &Value, args: &Value) -> String {
    serde_json::to_string(&Envelope {
        namespace,
        name,
        id,
        args,
    })
    .expect("a JSON value always serializes")
}

/// A success reply.
pub fn response(namespace: &str, id: &Value, args: &Value) -> String {
    render(namespace, "response", id, args)
}

/// An error reply; namespaces we could not read are answered as `rpc`.
pub fn error(namespace: Option<&str>, id: &Value, error: &Error) -> String {
    render(namespace.unwrap_or("rpc"), "error", id, &error.to_args())
}

/// An unsolicited event, e.g. a task status change.
pub fn event(name: &str, args: &Value) -> String {
    render("events", name, &Value::String(String::new()), args)
}

/// Helper for methods whose result is a plain object.
pub fn object(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_without_args_uses_the_whole_object() {
        let r = parse(r#"{"namespace":"rpc","name":"auth","id":"1","username":"u"}"#).unwrap();
        assert_eq!(r.args["username"], "u");
        assert_eq!(r.id, json!("1"));
    }

    #[test]
    fn unreadable_id_is_null_and_readable_id_is_echoed() {
        assert_eq!(parse("[1]").unwrap_err().id, Value::Null);
        assert_eq!(parse("{").unwrap_err().id, Value::Null);
        let e = parse(r#"{"id":7,"namespace":"rpc","name":3}"#).unwrap_err();
        assert_eq!(e.id, json!(7));
        assert_eq!(e.error.code(), 400);
        let e = parse(r#"{"id":{"x":1},"namespace":"rpc","name":"auth"}"#).unwrap_err();
        assert_eq!(e.id, Value::Null);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(100_000);
        assert_eq!(parse(&text).unwrap_err().error.code(), 400);
    }
}
