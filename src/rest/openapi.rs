//! The OpenAPI 3 document of the v2 shim (`/api/v2/openapi.json`) and a Swagger UI at `/docs`
//! served from vendored assets (`assets/swagger-ui`), so nothing is fetched at run time, under
//! a Content-Security-Policy that allows nothing else and no framing.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>poolgate v2 API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body></html>"##;

/// What the page runs, as a file of its own so that the policy allows no inline script. No
/// validator: Swagger UI would load a badge from validator.swagger.io.
const INIT_JS: &[u8] =
    b"window.ui = SwaggerUIBundle({url: \"/api/v2/openapi.json\", dom_id: \"#ui\", validatorUrl: null});\n";

/// The Content-Security-Policy of `/docs` and its assets: scripts and styles from this server
/// only (Swagger UI sets styles from its script, which the policy does not cover, and has
/// `style` attributes in what it renders: hence the inline styles), its icons are `data:`
/// images, it fetches the OpenAPI document and "Try it out" requests from here, and no page
/// may frame it.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers of every `/docs` response.
fn secured(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

pub async fn docs() -> Response {
    (secured("text/html; charset=utf-8"), DOCS_HTML).into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, mime) = match name.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE, "text/javascript"),
        "swagger-ui.css" => (CSS, "text/css"),
        "swagger-init.js" => (INIT_JS, "text/javascript"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        secured(mime),
        [(header::CACHE_CONTROL, "public, max-age=86400")],
        body,
    )
        .into_response()
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}})
}

fn data_response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["data"], "properties": {"data": {"$ref": format!("#/components/schemas/{schema}")}}
    }}}})
}

fn uuid_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

pub async fn spec() -> axum::Json<Value> {
    axum::Json(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "poolgate — dispatcher v2 compatibility API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST paths of the dispatcher's v2 API as the reference mock (devalv/mockapi) shapes them. Authenticate with `Authorization: JWT <access_token>` from `/users/login/`. Task status changes are pushed on `WS /api/v2/pools/ws/{client_id}/` (cookie `JWT <token>`), as `{\"status\",\"id\",\"kind\",...}`."
        },
        "servers": [{"url": "/api/v2"}],
        "components": {
            "securitySchemes": {"JWT": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`JWT <access_token>`"}},
            "schemas": schemas(),
        },
        "paths": paths(),
    }))
}

/// The request and response bodies, by name (`#/components/schemas/…`).
fn schemas() -> Value {
    json!({
        "Errors": {"type": "object", "properties": {"detail": {"type": "array", "items": {
            "type": "object", "required": ["msg", "err_code", "type"],
            "properties": {"msg": {"type": "string"}, "err_code": {"type": "integer"}, "type": {"type": "string"},
                           "next_step": {"type": "string"}, "ctx": {"type": "object"},
                           "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}}}}},
        "Login": {"type": "object", "required": ["username", "password", "ldap"], "properties": {
            "username": {"type": "string"}, "password": {"type": "string", "nullable": true},
            "ldap": {"type": "boolean"}, "otp_code": {"type": "string", "nullable": true}}},
        "Token": {"type": "object", "properties": {"access_token": {"type": "string"}, "refresh_token": {"type": "string"}, "token_type": {"type": "string", "enum": ["JWT"]}}},
        "Pool": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "status": {"type": "string"},
            "is_favorite": {"type": "boolean"}, "pool_type": {"type": "string"}, "os_type": {"type": "string"},
            "connection_types": {"type": "array", "items": {"type": "string"}}}},
        "PoolPage": {"type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Pool"}},
            "total": {"type": "integer"}, "page": {"type": "integer"}, "size": {"type": "integer"}, "pages": {"type": "integer"}}},
        "Task": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "kind": {"type": "string", "enum": ["POOL_EXPAND", "GLINT_START"]},
            "status": {"type": "string", "enum": ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]},
            "pool_id": {"type": "string", "format": "uuid"},
            "created": {"type": "string", "format": "date-time"}, "started": {"type": "string", "format": "date-time", "nullable": true},
            "finished": {"type": "string", "format": "date-time", "nullable": true},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "error": {"type": "object", "properties": {"err_code": {"type": "integer"}, "message": {"type": "string"}}}}},
        "Connect": {"type": "object", "required": ["remote_protocol", "width", "height", "password"], "properties": {
            "remote_protocol": {"type": "integer", "enum": [1]}, "width": {"type": "integer", "minimum": 2},
            "height": {"type": "integer", "minimum": 2}, "password": {"type": "string", "nullable": true}}},
        "Connection": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "verbose_name": {"type": "string"},
            "permissions": {"type": "array", "items": {"type": "string"}}, "host": {"type": "string"},
            "port": {"type": "integer"}, "status": {"type": "string"}, "protocol_id": {"type": "integer"}}},
        "IsDone": {"type": "object", "properties": {"is_done": {"type": "boolean"}}},
        "Settings": {"type": "object"},
        "Health": {"type": "object"},
        "Version": {"type": "object", "properties": {
            "version": {"type": "string"}, "build": {"type": "string"}, "year": {"type": "string"}, "url": {"type": "string"},
            "copyright": {"type": "string"}, "client": {"type": "string"}, "gateway": {"type": "string"}}}
    })
}

/// Every path of the v2 API, with what it answers.
fn paths() -> Value {
    let secured = json!([{"JWT": []}]);
    let denied =
        error_response("Missing, invalid, expired or revoked token (`Permission denied.`)");
    let invalid = error_response("Validation error (`err_code` 999 on each item)");
    json!({
        "/users/login/": {"post": {
            "summary": "Sign in", "tags": ["users"],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Login"}}}},
            "responses": {"200": data_response("Signed in", "Token"),
                          "401": error_response("Invalid credentials (999) or wrong one-time code (103)"),
                          "422": invalid,
                          "428": error_response("MFA required: 100 one-time code (send otp_code), 101 ADFS, 102 security key (with a key registered, next_step is {path, mfa_token, publicKey}); with single sign-on configured, 101 also carries verification_uri, verification_uri_complete, user_code, expires_in, interval, device_code and poll")}}},
        "/users/login/sso/{user_code}/": {"get": {
            "summary": "Poll a single sign-on hand-off (RFC 8628) with the device_code of the login's 428", "tags": ["users"],
            "parameters": [{"name": "user_code", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "device_code", "in": "query", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": data_response("Signed in", "Token"),
                          "400": {"description": "error: authorization_pending, slow_down or expired_token"},
                          "401": error_response("Another client's hand-off"),
                          "428": error_response("A one-time code is still due (100)")}}},
        "/users/login/webauthn/": {"post": {
            "summary": "Answer a login's 428/102 with the security key's credential (PublicKeyCredential JSON, base64url) and the next_step's mfa_token", "tags": ["users"],
            "responses": {"200": data_response("Signed in", "Token"),
                          "401": error_response("The key's answer was refused, or the challenge expired or was used")}}},
        "/users/adfs/": {"post": {"summary": "ADFS sign-in (a 428's next_step for err_code 101): not available on this server", "tags": ["users"],
            "responses": {"501": error_response("ADFS sign-in is not available on this server (101)")}}},
        "/users/hardware_token/": {"post": {"summary": "Hardware-token sign-in (a 428's next_step for err_code 102): not available on this server", "tags": ["users"],
            "responses": {"501": error_response("Hardware-token sign-in is not available on this server (102)")}}},
        "/users/logout/": {"post": {"summary": "Sign out; the token is revoked", "tags": ["users"], "security": secured,
            "responses": {"205": {"description": "Signed out"}, "403": denied}}},
        "/users/settings/": {"get": {"summary": "Client settings", "tags": ["users"], "security": secured,
            "responses": {"200": data_response("Settings", "Settings"), "403": denied}}},
        "/pools/": {"get": {"summary": "The caller's pools", "tags": ["pools"], "security": secured,
            "parameters": [{"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
                           {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                           {"name": "is_favorite", "in": "query", "schema": {"type": "boolean", "default": false}}],
            "responses": {"200": {"description": "Page of pools", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PoolPage"}}}}, "403": denied, "422": invalid}}},
        "/pools/{id}/connect/": {
            "get": {"summary": "Step 1: a machine for the caller in the pool", "tags": ["pools"], "security": secured,
                "parameters": [uuid_param("id")],
                "responses": {"200": data_response("The caller has a machine (COMPLETED task)", "Task"),
                              "202": data_response("Task pending or running", "Task"),
                              "403": error_response("Permission denied, Insufficient permissions (900) or Pool cannot be expanded (800)"),
                              "422": invalid}},
            "post": {"summary": "Step 2: connection data", "tags": ["pools"], "security": secured,
                "parameters": [uuid_param("id")],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Connect"}}}},
                "responses": {"200": data_response("Connection data", "Connection"),
                              "202": data_response("Task pending or running", "Task"),
                              "403": error_response("Permission denied or Insufficient permissions (900)"),
                              "409": error_response("No eligible machine found for user connection (801)"),
                              "422": invalid}}},
        "/tasks/{task_id}/": {"get": {"summary": "One of the caller's tasks", "tags": ["tasks"], "security": secured,
            "parameters": [uuid_param("task_id")],
            "responses": {"200": data_response("Task", "Task"), "403": denied, "404": error_response("Not found (or not yours)"), "422": invalid}}},
        "/tasks/{task_id}/is-done/": {"get": {"summary": "Whether a task has ended (COMPLETED, FAILED or CANCELLED)", "tags": ["tasks"], "security": secured,
            "parameters": [uuid_param("task_id")],
            "responses": {"200": data_response("Done or not", "IsDone"), "403": denied, "404": error_response("Not found (or not yours)"), "422": invalid}}},
        "/health/": {"get": {"summary": "Health", "tags": ["service"], "responses": {"200": data_response("Healthy", "Health")}}},
        "/version/": {"get": {"summary": "Version", "tags": ["service"], "responses": {"200": data_response("Version", "Version")}}}
    })
}
