//! Property tests over the same parsers the fuzz targets exercise (fuzz/): they run in CI on
//! the stable toolchain, where cargo fuzz cannot.

use poolgate::envelope;
use poolgate::rpc::{Command, METHODS};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON values, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("username".to_owned()),
                    Just("password".to_owned()),
                    Just("otp_code".to_owned()),
                    Just("mfa_token".to_owned()),
                    Just("token".to_owned()),
                    Just("pool_id".to_owned()),
                    Just("task_id".to_owned()),
                    Just("is_favorite".to_owned()),
                    Just("remote_protocol".to_owned()),
                    Just("width".to_owned()),
                    Just("height".to_owned()),
                    ".{0,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_text_frame_parses_or_gets_a_400_with_a_usable_id(text in ".{0,200}") {
        match envelope::parse(&text) {
            Ok(req) => {
                let id: Value = serde_json::from_str(req.id.get()).unwrap();
                prop_assert!(id.is_string() || id.is_number());
            }
            Err(bad) => {
                prop_assert_eq!(bad.error.code(), 400);
                let id: Value = serde_json::from_str(bad.id.get()).unwrap();
                prop_assert!(matches!(id, Value::Null | Value::String(_) | Value::Number(_)));
            }
        }
    }

    #[test]
    fn any_envelope_object_echoes_a_readable_id(id in any_json(), ns in any_json(), name in any_json(), args in any_json()) {
        let frame = json!({"namespace": ns, "name": name, "id": id, "args": args}).to_string();
        let expected_id = match &id {
            Value::String(_) | Value::Number(_) => id.clone(),
            _ => Value::Null,
        };
        match envelope::parse(&frame) {
            Ok(req) => prop_assert_eq!(serde_json::from_str::<Value>(req.id.get()).unwrap(), expected_id),
            Err(bad) => prop_assert_eq!(serde_json::from_str::<Value>(bad.id.get()).unwrap(), expected_id),
        }
    }

    #[test]
    fn every_methods_argument_parsing_answers_400_or_succeeds(pick in 0usize..64, args in any_json()) {
        let method = METHODS[pick % METHODS.len()];
        let args = serde_json::value::to_raw_value(&args).unwrap();
        if let Err(e) = Command::parse(method, &args) {
            prop_assert_eq!(e.code(), 400);
        }
    }
}
