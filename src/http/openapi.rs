//! The OpenAPI document, generated from the route table (`ROUTES`) so that every served route is documented and
//! tagged with the access it requires (`x-tether-access`).

use axum::Json;
use serde_json::{Map, Value, json};

use super::{PUBLIC_ROUTES, ROUTES, RouteDoc};

/// `GET /openapi.json`.
pub async fn get_openapi() -> Json<Value> {
    Json(document())
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn operation(version: &str, r: &RouteDoc) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if r.paginated {
        params.push(json!({"name": "perPage", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}));
        params.push(json!({"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}}));
    }
    params.push(json!({"name": "X-Org-ID", "in": "header", "schema": {"type": "string"}}));
    let mut responses = Map::new();
    let success = if r.status == 204 {
        json!({"description": "Done; no body"})
    } else {
        json!({"description": "Success", "content": {"application/json": {"schema": {}}}})
    };
    responses.insert(r.status.to_string(), success);
    responses.insert("400".into(), error_response("Malformed request"));
    responses.insert("401".into(), error_response("No or unknown token"));
    responses.insert(
        "403".into(),
        error_response("No access to the organization, or the role forbids it"),
    );
    responses.insert("404".into(), error_response("Not found in this organization"));
    if matches!(r.method, "post" | "patch" | "delete") {
        responses.insert("409".into(), error_response("Conflict"));
        responses.insert("413".into(), error_response("Body too large"));
        responses.insert(
            "422".into(),
            error_response("A rule is broken or the body names something unknown"),
        );
    }
    let mut op = json!({
        "operationId": format!("{}_{version}", r.operation),
        "summary": r.summary,
        "tags": [r.path.trim_start_matches('/').split('/').next().unwrap_or("api")],
        "parameters": params,
        "responses": responses,
        "security": [{"oauth": []}],
        "x-tether-access": r.access.as_str(),
    });
    if matches!(r.method, "post" | "patch") {
        op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
    }
    op
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for version in ["v2", "v3"] {
        for r in ROUTES {
            let path = format!("/{version}{}", r.path);
            let entry = paths.entry(path).or_insert_with(|| json!({}));
            entry[r.method] = operation(version, r);
        }
    }
    for (method, path, summary) in PUBLIC_ROUTES {
        let op = json!({
            "operationId": path.trim_start_matches('/').replace('.', "_"),
            "summary": summary,
            "security": [],
            "responses": {"200": {"description": "Success", "content": {"application/json": {"schema": {}}}}},
            "x-tether-access": "public",
        });
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[*method] = op;
    }
    for (method, path, access, summary) in crate::integrations::sentry::ROUTES {
        let op = json!({
            "operationId": format!("sentry_{}_{method}", path.trim_start_matches("/sentry/").replace('/', "_")),
            "summary": summary,
            "tags": ["sentry"],
            "security": [],
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {"schema": {}}}},
                "401": {"description": "Missing or wrong signature", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SentryError"}}}},
            },
            "x-tether-access": access,
        });
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tether",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted issue tracker whose API is compatible with Yandex Tracker's.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "oauth": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`OAuth <token>` or `Bearer <token>`"},
            },
            "schemas": {
                "SentryError": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
                "Error": {
                    "type": "object",
                    "required": ["errors", "errorMessages", "statusCode"],
                    "properties": {
                        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
                        "errorMessages": {"type": "array", "items": {"type": "string"}},
                        "statusCode": {"type": "integer"},
                    },
                },
            },
        },
    })
}
