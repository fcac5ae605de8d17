//! Conversions between JSON values and the protobuf `Struct` / `Value` well-known
//! types, used for Clerk's `public_metadata` on both sides of the API.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Value as Json};

/// Converts a JSON object into a protobuf `Struct`.
pub fn struct_from_json(object: Map<String, Json>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, value_from_json(value)))
            .collect(),
    }
}

/// Converts a JSON object into a protobuf `Struct`, copying: for an object
/// that stays where it is (a cached profile's metadata).
pub fn struct_from_json_ref(object: &Map<String, Json>) -> Struct {
    Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), value_from_json_ref(value)))
            .collect(),
    }
}

/// Converts a protobuf `Struct` into a JSON object.
pub fn json_from_struct(value: Struct) -> Map<String, Json> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, json_from_value(value)))
        .collect()
}

fn value_from_json(value: Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        // protobuf numbers are doubles; integers beyond 2^53 lose precision,
        // as they would in any JSON client of the API.
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        Json::Object(object) => Kind::StructValue(struct_from_json(object)),
    };
    Value { kind: Some(kind) }
}

fn value_from_json_ref(value: &Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value_from_json_ref).collect(),
        }),
        Json::Object(object) => Kind::StructValue(struct_from_json_ref(object)),
    };
    Value { kind: Some(kind) }
}

fn json_from_value(value: Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.into_iter().map(json_from_value).collect())
        }
        Some(Kind::StructValue(object)) => Json::Object(json_from_struct(object)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_metadata_survives_a_round_trip() {
        let json = serde_json::json!({
            "plan": "pro",
            "seats": 3.0,
            "beta": true,
            "tags": ["a", null, {"deep": "ü"}],
        });
        let Json::Object(object) = json.clone() else {
            unreachable!()
        };
        assert_eq!(
            struct_from_json_ref(&object),
            struct_from_json(object.clone())
        );
        let back = json_from_struct(struct_from_json(object));
        assert_eq!(Json::Object(back), json);
    }
}
