//! Request validation as the reference mock gets it from FastAPI and pydantic: the same order of
//! checks, the same error `type`s, messages and `loc`s, so a client written against the mock
//! sees the same 422s from poolgate.
//!
//! FastAPI 0.115 (the mock's) handles a request in four stages (`get_request_handler` in
//! fastapi/routing.py, `solve_dependencies` in fastapi/dependencies/utils.py):
//! 1. it reads the body and, when the body is JSON (no `Content-Type`, `application/json` or
//!    `application/*+json`), decodes it: a syntax error answers 422 `json_invalid` at once,
//!    before any dependency runs;
//! 2. it runs the dependencies, here the mock's JWT check: the `HTTPException` it raises (403)
//!    ends the request, whatever else is wrong with it;
//! 3. it validates the path, the query and the body fields, collecting every error, and answers
//!    one 422 listing them all (path first, then query, then body, fields in declaration order);
//! 4. only then does the handler run and look at state (403 900, 409 801, 404, ...).
//!
//! Handlers call [`read_body`] for stage 1, then authenticate, then fill a [`Problems`] with the
//! checks of stage 3 and [`Problems::finish`] it before touching state. Items carry `type`,
//! `loc`, `msg`, `err_code` 999 and pydantic's `ctx` where it has one; pydantic's `input` is
//! left out: it would echo a password back.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{MAX_BODY, RestError};
use crate::error::ERR_CODE_DEFAULT;

/// A request body after stage 1.
#[derive(Debug)]
pub enum Body {
    /// No body, or JSON `null`: FastAPI's "Field required" at `["body"]`.
    Missing,
    /// A decoded JSON body.
    Json(Value),
    /// Bytes under a `Content-Type` that is not JSON: FastAPI hands them to pydantic as they
    /// are, which rejects them in stage 3 like any other non-object.
    NotJson,
}

/// Stage 1: reads the body (413 past [`MAX_BODY`]) and decodes JSON bodies (422 `json_invalid`).
pub fn read_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Body, RestError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RestError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body too large: the limit is {MAX_BODY} bytes."),
                ERR_CODE_DEFAULT,
                "default",
            )
        } else if let Some(late) = crate::http::BodyTimeout::find(&e) {
            RestError::new(
                StatusCode::REQUEST_TIMEOUT,
                &format!("Request body not received in time: {late}."),
                ERR_CODE_DEFAULT,
                "default",
            )
        } else {
            RestError::validation(&["body"], "Unreadable request body.", "value_error")
        }
    })?;
    if body.is_empty() {
        return Ok(Body::Missing);
    }
    if !is_json(headers) {
        return Ok(Body::NotJson);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Null) => Ok(Body::Missing),
        Ok(value) => Ok(Body::Json(value)),
        Err(e) => {
            let mut problems = Problems::default();
            problems.add(
                json!(["body", char_offset(&body, &e)]),
                "json_invalid",
                "JSON decode error",
                Some(json!({"error": reason(&e)})),
            );
            Err(problems.into_error())
        }
    }
}

/// Stage 1 for the sign-in: [`read_body`], except that a body sent without any
/// `Content-Type` is not taken for JSON (it answers the 422 of any non-JSON body). FastAPI
/// would decode it; but a page of another site can send such a body without the browser
/// asking first (a `fetch` of a typeless `Blob`), and would then drive sign-ins — with the
/// visitor's address against the lockout — while a JSON `Content-Type` needs a CORS
/// preflight, which poolgate never grants.
pub fn read_json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Body, RestError> {
    let body = read_body(headers, body)?;
    if headers.get(header::CONTENT_TYPE).is_none() && matches!(body, Body::Json(_)) {
        return Ok(Body::NotJson);
    }
    Ok(body)
}

/// FastAPI decodes the body as JSON when there is no `Content-Type`, or when it is
/// `application/json` or `application/<anything>+json` (parameters such as `charset` aside).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

/// Where decoding stopped, in characters from the start (Python's `JSONDecodeError.pos`):
/// the offending character, or the end for a truncated body. serde_json's column is 1-based
/// and, at the end of input, names the last character.
fn char_offset(body: &[u8], e: &serde_json::Error) -> usize {
    let text = String::from_utf8_lossy(body);
    let line_start: usize = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(|l| l.chars().count())
        .sum();
    let column = match e.classify() {
        serde_json::error::Category::Eof => e.column(),
        _ => e.column().saturating_sub(1),
    };
    line_start + column
}

/// serde_json's message without its " at line L column C" tail (the offset is in `loc`).
fn reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The validation errors of one request, reported together as one 422.
#[derive(Debug, Default)]
pub struct Problems(Vec<Value>);

impl Problems {
    /// One item in pydantic's shape, with the mock's `err_code`.
    pub fn add(&mut self, loc: Value, kind: &str, msg: impl Into<String>, ctx: Option<Value>) {
        let mut item =
            json!({"type": kind, "loc": loc, "msg": msg.into(), "err_code": ERR_CODE_DEFAULT});
        if let Some(ctx) = ctx {
            item["ctx"] = ctx;
        }
        self.0.push(item);
    }

    fn into_error(self) -> RestError {
        RestError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: self.0,
        }
    }

    /// Ends stage 3: a 422 with every problem, or the validated value.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, RestError> {
        if !self.0.is_empty() {
            return Err(self.into_error());
        }
        // Every check that yields no value records a problem; this is a bug if reached.
        value.ok_or_else(|| {
            tracing::error!("a request failed validation without a recorded problem");
            RestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error.",
                ERR_CODE_DEFAULT,
                "default",
            )
        })
    }
}

/// A UUID path segment (pydantic's `UUID`; any version, see protocol/v2-rest.md).
pub fn uuid_path(
    raw: Result<Path<String>, PathRejection>,
    name: &str,
    problems: &mut Problems,
) -> Option<uuid::Uuid> {
    let error = match raw {
        Ok(Path(raw)) => match raw.parse::<uuid::Uuid>() {
            Ok(id) => return Some(id),
            Err(e) => e.to_string(),
        },
        Err(_) => "invalid UTF-8 in the path segment".to_owned(),
    };
    problems.add(
        json!(["path", name]),
        "uuid_parsing",
        format!("Input should be a valid UUID, {error}"),
        Some(json!({"error": error})),
    );
    None
}

/// The query parameters, last value winning as in Starlette.
pub type Query = HashMap<String, String>;

/// A boolean query parameter with a default.
pub fn query_bool(
    query: &Query,
    name: &str,
    default: bool,
    problems: &mut Problems,
) -> Option<bool> {
    let Some(raw) = query.get(name) else {
        return Some(default);
    };
    match str_bool(raw) {
        Some(b) => Some(b),
        None => {
            problems.add(json!(["query", name]), "bool_parsing", BOOL_PARSING, None);
            None
        }
    }
}

/// An integer query parameter with a default and bounds.
pub fn query_int(
    query: &Query,
    name: &str,
    default: i64,
    bounds: (i64, Option<i64>),
    problems: &mut Problems,
) -> Option<i64> {
    let Some(raw) = query.get(name) else {
        return Some(default);
    };
    let loc = json!(["query", name]);
    match str_int(raw) {
        Some(n) => within(n, bounds, loc, problems),
        None => {
            problems.add(loc, "int_parsing", INT_PARSING, None);
            None
        }
    }
}

fn within(
    n: i64,
    (ge, le): (i64, Option<i64>),
    loc: Value,
    problems: &mut Problems,
) -> Option<i64> {
    if n < ge {
        problems.add(
            loc,
            "greater_than_equal",
            format!("Input should be greater than or equal to {ge}"),
            Some(json!({"ge": ge})),
        );
        return None;
    }
    if let Some(le) = le
        && n > le
    {
        problems.add(
            loc,
            "less_than_equal",
            format!("Input should be less than or equal to {le}"),
            Some(json!({"le": le})),
        );
        return None;
    }
    Some(n)
}

const BOOL_PARSING: &str = "Input should be a valid boolean, unable to interpret input";
const INT_PARSING: &str = "Input should be a valid integer, unable to parse string as an integer";

/// The fields of a JSON-object body, checked as a pydantic model in lax mode. Each getter
/// records its problem and returns `None`; when the body is no object at all, only that is
/// recorded (as pydantic does) and the getters record nothing.
pub struct Fields<'a> {
    object: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    pub fn of(body: &'a Body, problems: &mut Problems) -> Fields<'a> {
        let object = match body {
            Body::Json(Value::Object(map)) => Some(map),
            Body::Missing => {
                problems.add(json!(["body"]), "missing", "Field required", None);
                None
            }
            Body::Json(_) | Body::NotJson => {
                problems.add(
                    json!(["body"]),
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                    None,
                );
                None
            }
        };
        Fields { object }
    }

    /// `Ok(None)` for an absent optional field; `Err(())` when nothing can be said (no object,
    /// or a required field is missing: recorded).
    fn get(
        &self,
        name: &str,
        required: bool,
        problems: &mut Problems,
    ) -> Result<Option<&'a Value>, ()> {
        let object = self.object.ok_or(())?;
        match object.get(name) {
            Some(v) => Ok(Some(v)),
            None if required => {
                problems.add(json!(["body", name]), "missing", "Field required", None);
                Err(())
            }
            None => Ok(None),
        }
    }

    /// A required string.
    pub fn string(&self, name: &str, problems: &mut Problems) -> Option<String> {
        match self.get(name, true, problems) {
            Ok(Some(Value::String(s))) => Some(s.clone()),
            Ok(_) => {
                string_type(name, problems);
                None
            }
            Err(()) => None,
        }
    }

    /// `str | None`: `required` when the model has no default (the field must be present, may
    /// be `null`).
    pub fn nullable_string(
        &self,
        name: &str,
        required: bool,
        problems: &mut Problems,
    ) -> Option<Option<String>> {
        match self.get(name, required, problems) {
            Ok(None | Some(Value::Null)) => Some(None),
            Ok(Some(Value::String(s))) => Some(Some(s.clone())),
            Ok(Some(_)) => {
                string_type(name, problems);
                None
            }
            Err(()) => None,
        }
    }

    /// A required boolean, lax: also 0/1 and pydantic's words ("yes", "off", ...).
    pub fn boolean(&self, name: &str, problems: &mut Problems) -> Option<bool> {
        let value = self.get(name, true, problems).ok()??;
        let loc = json!(["body", name]);
        let parsed = match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => str_bool(s).ok_or(("bool_parsing", BOOL_PARSING)),
            Value::Number(n) => match n.as_f64() {
                Some(0.0) => Ok(false),
                Some(1.0) => Ok(true),
                Some(f) if f.fract() == 0.0 => Err(("bool_parsing", BOOL_PARSING)),
                _ => Err(("bool_type", "Input should be a valid boolean")),
            },
            _ => Err(("bool_type", "Input should be a valid boolean")),
        };
        parsed
            .map_err(|(kind, msg)| problems.add(loc, kind, msg, None))
            .ok()
    }

    /// A required integer of at least `ge`, lax: also `3.0`, `"3"` and `true`.
    pub fn int_at_least(&self, name: &str, ge: i64, problems: &mut Problems) -> Option<i64> {
        let value = self.get(name, true, problems).ok()??;
        let loc = json!(["body", name]);
        match lax_int(value) {
            Ok(n) => within(n, (ge, None), loc, problems),
            Err((kind, msg)) => {
                problems.add(loc, kind, msg, None);
                None
            }
        }
    }

    /// A required member of an integer enum (`IntEnum`), lax like [`Fields::int_at_least`].
    pub fn int_enum(&self, name: &str, members: &[i64], problems: &mut Problems) -> Option<i64> {
        let value = self.get(name, true, problems).ok()??;
        match lax_int(value) {
            Ok(n) if members.contains(&n) => Some(n),
            _ => {
                let expected = match members {
                    [] => String::new(),
                    [one] => one.to_string(),
                    [init @ .., last] => format!(
                        "{} or {last}",
                        init.iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                problems.add(
                    json!(["body", name]),
                    "enum",
                    format!("Input should be {expected}"),
                    Some(json!({"expected": expected})),
                );
                None
            }
        }
    }
}

fn string_type(name: &str, problems: &mut Problems) {
    problems.add(
        json!(["body", name]),
        "string_type",
        "Input should be a valid string",
        None,
    );
}

/// pydantic's words for booleans, any case, no surrounding spaces.
fn str_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
        "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
        _ => None,
    }
}

/// pydantic's lax integer: whole numbers, booleans and numeric strings.
fn lax_int(value: &Value) -> Result<i64, (&'static str, &'static str)> {
    match value {
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            if n.is_u64() {
                return Ok(i64::MAX);
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 {
                Err((
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ))
            } else {
                // Python's integers have no bounds; anything this large is clamped.
                Ok(f as i64)
            }
        }
        Value::String(s) => str_int(s).ok_or(("int_parsing", INT_PARSING)),
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

/// Python's `int(str)` as pydantic applies it: surrounding whitespace, a sign, `_` between
/// digits, and a `.000` tail are allowed; the result is clamped to `i64`.
fn str_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.split_once('.') {
        Some((whole, frac)) if frac.bytes().all(|b| b == b'0') => whole,
        Some(_) => return None,
        None => s,
    };
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut n: i64 = 0;
    for d in digits.bytes().filter(u8::is_ascii_digit) {
        let d = i64::from(d - b'0');
        n = n
            .saturating_mul(10)
            .saturating_add(if negative { -d } else { d });
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_become_integers_as_python_reads_them() {
        for (s, n) in [
            ("3", 3),
            (" 3 ", 3),
            ("+3", 3),
            ("-3", -3),
            ("01", 1),
            ("3_000", 3000),
            ("1.0", 1),
            ("99999999999999999999999", i64::MAX),
        ] {
            assert_eq!(str_int(s), Some(n), "{s}");
        }
        for s in [
            "", "abc", "1e3", "0x10", "1_", "_1", "1__0", "1.5", "-", "３",
        ] {
            assert_eq!(str_int(s), None, "{s}");
        }
    }

    #[test]
    fn pydantic_words_are_booleans_in_any_case() {
        assert_eq!(str_bool("TRUE"), Some(true));
        assert_eq!(str_bool("n"), Some(false));
        assert_eq!(str_bool(" true "), None);
        assert_eq!(str_bool("2"), None);
    }

    #[test]
    fn json_content_types_are_recognised_as_fastapi_does() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(is_json(&HeaderMap::new()));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
    }
}
