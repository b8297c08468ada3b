//! The run spec parser on hostile input: any JSON document, and the valid spec with one field
//! replaced by anything, either parses (and then survives a round trip) or is refused with
//! every bad field named. It never panics.

use mpl_protocol::{RunSpec, SpecError};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, a few levels deep, with keys that sometimes hit the spec's own names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(vec![0.0, -0.0, 1e308, -1e308, f64::MIN_POSITIVE])
            .prop_map(Value::from),
        "[a-z_:0-9]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "algorithm",
            "model",
            "data",
            "labeled",
            "path",
            "format",
            "batch_size",
            "mu",
            "total_steps",
            "augment",
            "mpl",
            "uda",
            "device",
            "eval",
            "checkpoint",
        ])
        .prop_map(String::from),
        "[a-z_]{1,10}",
    ]
}

/// A complete valid spec: every field written out with its default.
fn valid_spec() -> Value {
    let minimal = json!({"data": {"labeled": {"path": "x.idx", "format": "idx"}}});
    let spec = RunSpec::from_value(minimal).expect("the minimal spec is valid");
    serde_json::to_value(spec).expect("a spec serialises")
}

/// Every path to a value inside `value` (object keys and array indices), the root included.
fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(k.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(i.to_string());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn replace(value: &mut Value, path: &[String], new: Value) {
    let Some((first, rest)) = path.split_first() else {
        *value = new;
        return;
    };
    let child = match value {
        Value::Object(map) => map.get_mut(first),
        Value::Array(items) => first.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    };
    if let Some(child) = child {
        replace(child, rest, new);
    }
}

/// Parsing either succeeds and round-trips, or names what is wrong.
fn check(document: Value) {
    match RunSpec::from_value(document) {
        Ok(spec) => {
            let again = serde_json::to_value(&spec).expect("a parsed spec serialises");
            let reparsed = RunSpec::from_value(again).expect("a parsed spec parses again");
            assert_eq!(reparsed, spec);
        }
        Err(err) => {
            assert!(!err.fields().is_empty(), "an error without a field: {err}");
            for field in err.fields() {
                assert!(!field.message.is_empty(), "an empty message: {err}");
            }
            if let SpecError::Invalid(fields) = &err {
                // A value out of range always comes with the field it is in.
                assert!(fields.iter().all(|f| !f.field.is_empty()), "{err}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_document_is_parsed_or_refused_with_a_reason(document in json_value()) {
        check(document);
    }

    #[test]
    fn the_valid_spec_with_one_field_replaced_is_parsed_or_refused_with_a_reason(
        pick in any::<prop::sample::Index>(),
        new in json_value(),
    ) {
        let mut spec = valid_spec();
        let mut all = Vec::new();
        paths(&spec, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        replace(&mut spec, &path, new);
        check(spec);
    }

    #[test]
    fn the_valid_spec_with_an_unknown_field_added_is_refused_naming_it(
        name in "[a-z]{3,8}_x",
        new in json_value(),
    ) {
        let mut spec = valid_spec();
        if let Value::Object(map) = &mut spec {
            map.insert(name.clone(), new);
        }
        let err = RunSpec::from_value(spec).expect_err("an unknown field is refused");
        prop_assert!(err.to_string().contains(&name), "{}", err);
    }
}

#[test]
fn the_valid_spec_round_trips() {
    check(valid_spec());
}
