//! The sysadm-style envelope: `{"namespace","name","id","args"}` in, `response`/`error` out,
//! and `events` frames pushed to the RPC socket.
//!
//! It sits low (beside `error`, whose codes it renders) so that both the RPC methods and the
//! event fan-out (`events`) render frames with it without knowing about sockets. The reply
//! cache [`Replies`] lives here too: it is the rendering of a domain value as a reply's
//! `args`, shared by every connection through `AppState`, and it needs nothing of the methods
//! that use it — so the state that holds it does not depend on `rpc`.

use std::borrow::Cow;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::Task;
use crate::error::Error;

/// A request read off the wire, borrowing from the frame: `id` and `args` stay raw JSON, so
/// the id is echoed byte for byte and `args` is parsed once, straight into the method's type.
/// `args` is the whole object when the envelope has no `args` (sysadm's server and Qt client
/// behave so).
#[derive(Debug)]
pub struct Request<'a> {
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub id: &'a RawValue,
    pub args: &'a RawValue,
}

/// A request that could not be read; carries what could be read so the error can echo it.
#[derive(Debug)]
pub struct BadRequest<'a> {
    pub namespace: Option<Cow<'a, str>>,
    pub id: &'a RawValue,
    pub error: Error,
}

/// The envelope's fields, unparsed; anything else in the object is ignored. `namespace` and
/// `name` stay raw too: read as strings, a value serde_json refuses to read (a number out of
/// f64's range, a lone surrogate escape) would fail the whole frame and lose its id, where a
/// raw value is skipped unchecked and its field named in the error (found by a hostile
/// review; reading them as strings was ~230 instructions cheaper per request).
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    namespace: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// A raw JSON string's contents (borrowed unless it has escapes); `None` if not a string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    // The parser has checked the string; without a backslash, its contents are the bytes
    // between the quotes, so the common case is not parsed twice.
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
    let bad = |namespace, id, error| BadRequest {
        namespace,
        id,
        error,
    };
    let wire = read_wire(text)?;
    let id = wire.id.filter(|id| echoable(id));
    let namespace = wire.namespace.and_then(string);
    let Some(id) = id else {
        return Err(bad(
            namespace,
            RawValue::NULL,
            Error::bad_request("`id` must be a string or a number."),
        ));
    };
    let Some(namespace) = namespace else {
        return Err(bad(
            None,
            id,
            Error::bad_request("`namespace` must be a string."),
        ));
    };
    let Some(name) = wire.name.and_then(string) else {
        return Err(bad(
            Some(namespace),
            id,
            Error::bad_request("`name` must be a string."),
        ));
    };
    let args = match wire.args {
        Some(args) => args,
        // The whole object; it was just parsed, so this cannot fail.
        None => serde_json::from_str(text).map_err(|e| {
            bad(
                None,
                RawValue::NULL,
                Error::bad_request(format!("Malformed JSON: {e}.")),
            )
        })?,
    };
    Ok(Request {
        namespace,
        name,
        id,
        args,
    })
}

/// The frame read as a JSON object, its envelope fields not checked yet.
fn read_wire(text: &str) -> Result<Wire<'_>, BadRequest<'_>> {
    let bad = |error| BadRequest {
        namespace: None,
        id: RawValue::NULL,
        error,
    };
    // Checked first: serde would also read a struct from a JSON array.
    if !text.trim_start().starts_with('{') {
        let error = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Error::bad_request("A request must be a JSON object."),
            Err(e) => Error::bad_request(format!("Malformed JSON: {e}.")),
        };
        return Err(bad(error));
    }
    serde_json::from_str(text).map_err(|e| {
        let what = if e.is_data() {
            "Invalid request"
        } else {
            "Malformed JSON"
        };
        bad(Error::bad_request(format!("{what}: {e}.")))
    })
}

/// An `id` echoed as it came: a string that ordinary JSON parsers can read back (not a lone
/// surrogate, `"\ud800"`, which serde_json skips over unchecked), or a number they can (not
/// 1e400).
fn echoable(id: &RawValue) -> bool {
    match id.get().as_bytes()[0] {
        b'"' => !id.get().contains('\\') || serde_json::from_str::<String>(id.get()).is_ok(),
        // An integer shorter than f64's range (no fraction, no exponent) always reads back.
        b'-' | b'0'..=b'9' if id.get().len() < 300 && !id.get().contains(['.', 'e', 'E']) => true,
        b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(id.get()).is_ok(),
        _ => false,
    }
}

#[derive(Serialize)]
struct Envelope<'a, A: Serialize + ?Sized> {
    namespace: &'a str,
    name: &'a str,
    id: &'a RawValue,
    args: &'a A,
}

fn render<A: Serialize + ?Sized>(namespace: &str, name: &str, id: &RawValue, args: &A) -> String {
    serde_json::to_string(&Envelope {
        namespace,
        name,
        id,
        args,
    })
    .expect("a JSON value always serializes")
}

/// A success reply: the one frame every request answers with, so it is laid out directly
/// rather than through the serializer (a tenth of a cached lookup's instructions); it is the
/// same text `render` gives (a unit test holds them together).
pub fn response(namespace: &str, id: &RawValue, args: &RawValue) -> String {
    let (id, args) = (id.get(), args.get());
    let mut out = String::with_capacity(namespace.len() + id.len() + args.len() + 48);
    out.push_str("{\"namespace\":");
    push_string(&mut out, namespace);
    out.push_str(",\"name\":\"response\",\"id\":");
    out.push_str(id);
    out.push_str(",\"args\":");
    out.push_str(args);
    out.push('}');
    out
}

/// `s` as a JSON string: copied between quotes when nothing in it needs an escape (JSON
/// escapes only `"`, `\` and control characters), else escaped by the serializer.
fn push_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
    }
}

/// An error reply; namespaces we could not read are answered as `rpc`.
pub fn error(namespace: Option<&str>, id: &RawValue, error: &Error) -> String {
    render(namespace.unwrap_or("rpc"), "error", id, &error.to_args())
}

/// An unsolicited event, e.g. a task status change.
pub fn event<A: Serialize + ?Sized>(name: &str, args: &A) -> String {
    const EMPTY_ID: &str = "\"\"";
    let id: &RawValue = serde_json::from_str(EMPTY_ID).expect("a JSON string");
    render("events", name, id, args)
}

/// Values remembered with their rendered reply before the memory is cleared.
const REPLIES_MAX: usize = 16_384;

/// The last reply `args` rendered for each key, reused while the value is unchanged: a client
/// polling its task (or asking again for the connection data of a finished step 2) gets the
/// same bytes until the next change, without serializing the value again (a third of a task
/// lookup's instructions, measured with callgrind). Hashed with foldhash (seeded per process)
/// rather than SipHash: the keys are ids the server made, and SipHash was ~3 % of a lookup.
pub struct Replies<V>(DashMap<Uuid, (V, Arc<RawValue>), foldhash::fast::RandomState>);

impl<V> Default for Replies<V> {
    fn default() -> Self {
        Replies(DashMap::with_hasher(Default::default()))
    }
}

impl<V: Serialize + PartialEq> Replies<V> {
    /// `value` as a reply's `args`, rendered again only when it differs from the one last
    /// rendered under `key`; serializing failure is a bug, reported as a 500.
    /// The reply is shared with the cache, not copied out of it.
    pub fn render(&self, key: Uuid, value: V) -> Result<Arc<RawValue>, Error> {
        if let Some(hit) = self.0.get(&key)
            && hit.0 == value
        {
            return Ok(hit.1.clone());
        }
        let reply = shared_json(&value)?;
        if self.0.len() >= REPLIES_MAX {
            self.0.clear();
        }
        self.0.insert(key, (value, reply.clone()));
        Ok(reply)
    }
}

/// `value` rendered once as JSON to be shared by every reply made from it (the reply caches);
/// serializing failure is a bug, reported as a 500.
pub fn shared_json<T: Serialize + ?Sized>(value: &T) -> Result<Arc<RawValue>, Error> {
    serde_json::value::to_raw_value(value)
        .map(Arc::from)
        .map_err(Error::internal)
}

/// Each task looked up, rendered as the reply of `rpc/task`.
pub type TaskReplies = Replies<Task>;

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::domain::{TaskKind, TaskStatus};

    #[test]
    fn a_changed_task_is_rendered_again() {
        let replies = TaskReplies::default();
        let rendered = |task: &Task| serde_json::to_string(task).unwrap();
        let mut task = Task::new(TaskKind::PoolExpand, Uuid::new_v4(), Uuid::new_v4());
        let first = replies.render(task.id, task.clone()).unwrap();
        assert_eq!(first.get(), rendered(&task));
        assert_eq!(
            replies.render(task.id, task.clone()).unwrap().get(),
            first.get()
        );
        task.status = TaskStatus::Running;
        task.progress = Some(50);
        let second = replies.render(task.id, task.clone()).unwrap();
        assert_ne!(second.get(), first.get());
        assert_eq!(second.get(), rendered(&task));
    }

    #[test]
    fn a_response_is_the_text_the_serializer_gives() {
        let args: &RawValue = serde_json::from_str(r#"{"a":[1,"\u00e9"]}"#).unwrap();
        for namespace in [
            "rpc",
            "ns with \"quotes\" and \\",
            "tab\there",
            "\u{7f}é\u{1}",
        ] {
            for id in [r#""1""#, "7", "-1.5e3", r#""\u0031\n""#] {
                let id: &RawValue = serde_json::from_str(id).unwrap();
                let fast = response(namespace, id, args);
                assert_eq!(fast, render(namespace, "response", id, args));
                let back: Value = serde_json::from_str(&fast).unwrap();
                assert_eq!(back["namespace"], namespace);
            }
        }
    }

    #[test]
    fn envelope_without_args_uses_the_whole_object() {
        let r = parse(r#"{"namespace":"rpc","name":"auth","id":"1","username":"u"}"#).unwrap();
        let args: Value = serde_json::from_str(r.args.get()).unwrap();
        assert_eq!(args["username"], "u");
        assert_eq!(r.id.get(), r#""1""#);
    }

    #[test]
    fn unreadable_id_is_null_and_readable_id_is_echoed() {
        assert_eq!(parse("[1]").unwrap_err().id.get(), "null");
        assert_eq!(parse("{").unwrap_err().id.get(), "null");
        let e = parse(r#"{"id":7,"namespace":"rpc","name":3}"#).unwrap_err();
        assert_eq!(e.id.get(), "7");
        assert_eq!(e.error.code(), 400);
        // Whatever a field that should be a string holds, the error names it and echoes the id.
        for (text, field) in [
            (
                r#"{"id":7,"namespace":{"a":[1,{"b":null}]},"name":"x"}"#,
                "namespace",
            ),
            (r#"{"id":7,"namespace":null,"name":"x"}"#, "namespace"),
            (
                r#"{"namespace":"rpc","name":[true,-1.5e3,"s"],"id":7}"#,
                "name",
            ),
            (r#"{"namespace":"rpc","id":7,"name":false}"#, "name"),
            // Values serde_json refuses to read as numbers or strings (a hostile review).
            (r#"{"id":7,"namespace":1e400,"name":"x"}"#, "namespace"),
            (r#"{"id":7,"namespace":"rpc","name":-1e400}"#, "name"),
            (r#"{"id":7,"namespace":"\ud800","name":"x"}"#, "namespace"),
            (
                r#"{"id":7,"namespace":"rpc","name":"\udc00\ud800"}"#,
                "name",
            ),
            (
                r#"{"id":7,"namespace":{"\ud800":1},"name":"x"}"#,
                "namespace",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.id.get(), "7", "{text}");
            let message = e.error.to_string();
            assert!(
                message.contains(&format!("`{field}` must be a string")),
                "{text}: {message}"
            );
        }
        let long = format!(r#"{{"id":7,"namespace":{},"name":"x"}}"#, "9".repeat(400));
        assert_eq!(parse(&long).unwrap_err().id.get(), "7");
        let e = parse(r#"{"id":{"x":1},"namespace":"rpc","name":"auth"}"#).unwrap_err();
        assert_eq!(e.id.get(), "null");
        // Echoed byte for byte, however the number is written.
        let r = parse(r#"{"id":1.50e3,"namespace":"rpc","name":"x"}"#).unwrap();
        assert_eq!(r.id.get(), "1.50e3");
    }

    #[test]
    fn escaped_strings_are_read() {
        let r = parse(r#"{"id":"\u0031","namespace":"\u0072pc","name":"task"}"#).unwrap();
        assert_eq!(r.namespace, "rpc");
        assert_eq!(r.id.get(), r#""\u0031""#);
        let r = parse(r#"{"id":1,"namespace":"a\"b\\","name":"\/x é"}"#).unwrap();
        assert_eq!((&*r.namespace, &*r.name), ("a\"b\\", "/x é"));
        let r = parse(r#"{"id":1,"namespace":"","name":"é"}"#).unwrap();
        assert_eq!((&*r.namespace, &*r.name), ("", "é"));
    }

    #[test]
    fn arrays_and_duplicates_are_not_requests() {
        let e = parse(r#"["rpc","task",1,{}]"#).unwrap_err();
        assert!(e.error.to_string().contains("JSON object"), "{}", e.error);
        let e = parse(r#"{"id":1,"id":2,"namespace":"rpc","name":"x"}"#).unwrap_err();
        assert_eq!(e.error.code(), 400);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(100_000);
        assert_eq!(parse(&text).unwrap_err().error.code(), 400);
        let text = format!(
            r#"{{"id":1,"namespace":"rpc","name":"x","a":{}"#,
            "[".repeat(100_000)
        );
        assert_eq!(parse(&text).unwrap_err().error.code(), 400);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"id":1,"namespace":"rpc","name":"x","args":{deep}}}"#);
        // Skipping a deep value is iterative; the method's own parse then refuses it.
        if let Ok(r) = parse(&text) {
            assert!(serde_json::from_str::<Value>(r.args.get()).is_err());
        }
    }

    /// Found by a hostile review: an id with a lone surrogate escape was accepted and echoed,
    /// making a reply no JSON parser reads; it is refused like any id that is not a string.
    #[test]
    fn every_reply_to_an_accepted_request_is_readable_json() {
        for id in [r#""\ud800""#, r#""\udc00x""#, r#""a\ud83d""#] {
            let frame = format!(r#"{{"id":{id},"namespace":"rpc","name":"identify"}}"#);
            let Err(refused) = parse(&frame) else {
                panic!("{frame} accepted");
            };
            assert_eq!(refused.id.get(), "null", "{frame}");
        }
        for id in [r#""\ud83d\ude00""#, r#""tab\there""#, "7"] {
            let frame = format!(r#"{{"id":{id},"namespace":"rpc","name":"identify"}}"#);
            let r = parse(&frame).expect("accepted");
            let args: &RawValue = serde_json::from_str("{}").unwrap();
            let reply = response(&r.namespace, r.id, args);
            serde_json::from_str::<serde_json::Value>(&reply).expect("a readable reply");
        }
    }
}
