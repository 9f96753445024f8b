//! The JSON schemas Glance serves for its metadata definitions catalog
//! (`/v2/schemas/metadefs/...`): what a namespace, resource type
//! association, object, property and tag look like. Clients read them to
//! validate and render; the catalog itself holds no definitions here.

use serde_json::{json, Value as Json};

fn timestamps() -> Json {
    json!({
        "created_at": {"type": "string", "readOnly": true, "format": "date-time",
                       "description": "Date and time of creation (READ-ONLY)"},
        "updated_at": {"type": "string", "readOnly": true, "format": "date-time",
                       "description": "Date and time of the last modification (READ-ONLY)"},
    })
}

fn with_timestamps(mut properties: Json) -> Json {
    if let (Some(p), Json::Object(t)) = (properties.as_object_mut(), timestamps()) {
        p.extend(t);
    }
    properties
}

fn property() -> Json {
    json!({
        "name": "property",
        "additionalProperties": false,
        "required": ["name", "title", "type"],
        "properties": {
            "name": {"type": "string", "maxLength": 255},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "operators": {"type": "array", "items": {"type": "string"}},
            "type": {"type": "string",
                     "enum": ["array", "boolean", "integer", "number", "object", "string", null]},
            "required": {"type": "array", "items": {"type": "string"}},
            "minimum": {"type": "number"},
            "maximum": {"type": "number"},
            "maxLength": {"type": "integer", "minimum": 0},
            "minLength": {"type": "integer", "minimum": 0},
            "pattern": {"type": "string", "format": "regex"},
            "enum": {"type": "array"},
            "readonly": {"type": "boolean"},
            "default": {},
            "uniqueItems": {"type": "boolean", "default": false},
            "maxItems": {"type": "integer", "minimum": 0},
            "minItems": {"type": "integer", "minimum": 0, "default": 0},
            "additionalItems": {"type": "boolean"},
            "items": {"type": "object"},
        },
    })
}

fn resource_type_association() -> Json {
    json!({
        "name": "resource_type_association",
        "additionalProperties": false,
        "required": ["name"],
        "properties": with_timestamps(json!({
            "name": {"type": "string", "maxLength": 80,
                     "description": "Resource type names should be aligned with Heat resource types whenever possible: https://docs.openstack.org/heat/latest/template_guide/openstack.html"},
            "prefix": {"type": "string", "maxLength": 80,
                       "description": "Specifies the prefix to use for the given resource type."},
            "properties_target": {"type": "string", "maxLength": 80,
                                  "description": "Some resource types allow more than one key / value pair per instance."},
        })),
    })
}

fn object() -> Json {
    json!({
        "name": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": with_timestamps(json!({
            "name": {"type": "string", "maxLength": 80},
            "description": {"type": "string"},
            "required": {"type": "array", "items": {"type": "string"}},
            "properties": {"type": "object", "additionalProperties": property()},
            "schema": {"type": "string", "readOnly": true},
            "self": {"type": "string", "readOnly": true},
        })),
    })
}

fn tag() -> Json {
    json!({
        "name": "tag",
        "additionalProperties": false,
        "required": ["name"],
        "properties": with_timestamps(json!({
            "name": {"type": "string", "maxLength": 255},
        })),
    })
}

fn namespace() -> Json {
    json!({
        "name": "namespace",
        "additionalProperties": false,
        "required": ["namespace"],
        "properties": with_timestamps(json!({
            "namespace": {"type": "string", "maxLength": 80,
                          "description": "The unique namespace text."},
            "display_name": {"type": "string", "maxLength": 80,
                             "description": "The user friendly name for the namespace."},
            "description": {"type": "string", "maxLength": 500},
            "visibility": {"type": "string", "enum": ["public", "private"]},
            "protected": {"type": "boolean"},
            "owner": {"type": "string", "maxLength": 255},
            "schema": {"type": "string", "readOnly": true},
            "self": {"type": "string", "readOnly": true},
            "resource_type_associations": {"type": "array", "items": resource_type_association()},
            "properties": {"type": "object", "additionalProperties": property()},
            "objects": {"type": "array", "items": object()},
            "tags": {"type": "array", "items": tag()},
        })),
    })
}

/// A list schema: `name` holds an array of `item`s, with paging links.
fn many(name: &str, item: Json) -> Json {
    json!({
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

/// The schema `/v2/schemas/metadefs/{which}` serves, if any.
pub fn metadefs(which: &str) -> Option<Json> {
    Some(match which {
        "namespace" => namespace(),
        "namespaces" => many("namespaces", namespace()),
        "resource_type" => resource_type_association(),
        "resource_types" => many("resource_type_associations", resource_type_association()),
        "object" => object(),
        "objects" => many("objects", object()),
        "property" => property(),
        "properties" => many("properties", property()),
        "tag" => tag(),
        "tags" => many("tags", tag()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_named_as_glance_names_it() {
        for (which, name) in [
            ("namespace", "namespace"),
            ("namespaces", "namespaces"),
            ("resource_type", "resource_type_association"),
            ("resource_types", "resource_type_associations"),
            ("object", "object"),
            ("objects", "objects"),
            ("property", "property"),
            ("properties", "properties"),
            ("tag", "tag"),
            ("tags", "tags"),
        ] {
            let s = metadefs(which).unwrap();
            assert_eq!(s["name"], name, "{which}");
            assert!(s["properties"].is_object(), "{which}");
        }
        assert!(metadefs("image").is_none());
        assert_eq!(
            metadefs("namespace").unwrap()["properties"]["created_at"]["readOnly"],
            true
        );
    }
}
