//! Bearer-token authentication, scopes, and the token resource.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>`. Only the sha256 of a token's secret
//! is stored; the secret is shown once, when the token is created. A token's scope is `read`
//! (GET only), `write` (everything on datasets, experiments and runs) or `admin` (also manages
//! tokens). The first admin token comes from `MPL_ADMIN_TOKEN`, or is generated on the first
//! start and printed once to stderr. Refused attempts are logged with a short fingerprint of the
//! presented token (a prefix of its hash), never the token itself.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, JsonBody};

/// Prefix of every token secret, so leaked secrets are recognisable.
const SECRET_PREFIX: &str = "mpl_";

/// Longest accepted token name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// Name of the token created from `MPL_ADMIN_TOKEN` or generated on first start.
const BOOTSTRAP_TOKEN_NAME: &str = "admin (bootstrap)";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read every resource.
    Read,
    /// Read, and create, change or delete datasets, experiments and runs.
    Write,
    /// Write, and manage tokens.
    Admin,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller of a request; handlers take it as an extractor.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The token the request was made with.
    pub token_id: Uuid,
    /// What that token may do.
    pub scope: Scope,
}

impl Caller {
    /// Refuses (403) a caller whose token is read-only.
    pub fn require_write(&self) -> ApiResult<()> {
        if self.scope >= Scope::Write {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Refuses (403) a caller whose token is not an admin token.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.scope == Scope::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Middleware on `/v1`: resolves the bearer token to a [`Caller`], applies the token's rate
/// limit, and refuses any method but GET/HEAD/OPTIONS to read-only tokens.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let path = request.uri().path().to_owned();
    let caller = match resolve_caller(&state.db, authorization, &path).await {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    if let Err(err) = state.limits.check_rate(caller.token_id) {
        return err.into_response();
    }
    let safe_method = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe_method && caller.scope < Scope::Write {
        tracing::warn!(token_id = %caller.token_id, method = %request.method(),
            "read-only token refused on a write route");
        return ApiError::Forbidden.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

async fn resolve_caller(
    db: &PgPool,
    authorization: Option<HeaderValue>,
    path: &str,
) -> ApiResult<Caller> {
    let Some(header_value) = authorization else {
        tracing::info!(path, "request without a bearer token refused");
        return Err(ApiError::Unauthorized);
    };
    let secret = header_value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Some(secret) = secret else {
        tracing::warn!(path, "malformed Authorization header refused");
        return Err(ApiError::Unauthorized);
    };
    let hash = hash_secret(secret);
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, scope, revoked_at, last_used_at FROM api_tokens WHERE token_hash = $1",
    )
    .bind(&hash[..])
    .fetch_optional(db)
    .await?;
    let fingerprint = hex::encode(&hash[..4]);
    let Some(TokenRow {
        id: token_id,
        scope,
        revoked_at,
        last_used_at,
    }) = row
    else {
        tracing::warn!(fingerprint, path, "unknown token refused");
        return Err(ApiError::Unauthorized);
    };
    if revoked_at.is_some() {
        tracing::warn!(fingerprint, %token_id, "revoked token refused");
        return Err(ApiError::Unauthorized);
    }
    let scope = Scope::parse(&scope)
        .ok_or_else(|| anyhow::anyhow!("token {token_id} has an unknown scope {scope:?}"))?;
    touch_last_used(db, token_id, last_used_at);
    Ok(Caller { token_id, scope })
}

/// Records use of a token at most once a minute, off the request's path.
fn touch_last_used(db: &PgPool, token_id: Uuid, last_used_at: Option<DateTime<Utc>>) {
    let stale = last_used_at.is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60));
    if !stale {
        return;
    }
    let db = db.clone();
    tokio::spawn(async move {
        let result = sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(token_id)
            .execute(&db)
            .await;
        if let Err(err) = result {
            tracing::debug!(error = %err, %token_id, "recording token use failed");
        }
    });
}

/// What authentication reads of a token.
#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    scope: String,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// The sha256 of a token secret, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// Makes sure an admin token exists.
///
/// With `configured` (from `MPL_ADMIN_TOKEN`) that token is registered (or re-enabled). Without
/// it, and with no usable admin token in the database, one is generated and printed once to
/// stderr; only its hash is kept.
pub async fn ensure_admin_token(db: &PgPool, configured: Option<&str>) -> anyhow::Result<()> {
    if let Some(secret) = configured {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, scope) VALUES ($1, $2, $3, 'admin') \
             ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL, scope = 'admin'",
        )
        .bind(Uuid::now_v7())
        .bind(BOOTSTRAP_TOKEN_NAME)
        .bind(&hash_secret(secret)[..])
        .execute(db)
        .await?;
        return Ok(());
    }
    let admins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE scope = 'admin' AND revoked_at IS NULL",
    )
    .fetch_one(db)
    .await?;
    if admins > 0 {
        return Ok(());
    }
    let secret = new_secret();
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, scope) VALUES ($1, $2, $3, 'admin')",
    )
    .bind(Uuid::now_v7())
    .bind(BOOTSTRAP_TOKEN_NAME)
    .bind(&hash_secret(&secret)[..])
    .execute(db)
    .await?;
    eprintln!(
        "\nNo MPL_ADMIN_TOKEN was given, so an admin token was generated. It is shown only \
         this once:\n\n    {secret}\n\nUse it as `Authorization: Bearer <token>` to create \
         other tokens with POST /v1/tokens.\n"
    );
    Ok(())
}

/// The token routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// A request to create a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for (shown in listings).
    pub name: String,
    /// What the token may do.
    pub scope: Scope,
}

/// A token as listed (never with its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Token {
    /// The token's id.
    pub id: Uuid,
    /// What the token is for.
    pub name: String,
    /// What the token may do.
    #[sqlx(try_from = "String")]
    pub scope: Scope,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to within a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<String> for Scope {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Scope::parse(&text).ok_or_else(|| format!("unknown token scope {text:?}"))
    }
}

/// A newly created token, with its secret (shown only this once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token's id.
    pub id: Uuid,
    /// What the token is for.
    pub name: String,
    /// What the token may do.
    pub scope: Scope,
    /// The secret to send as `Authorization: Bearer <token>`; it cannot be shown again.
    pub token: String,
}

/// Creates a token (admin only). The secret is in the response and nowhere else.
#[utoipa::path(post, path = "/tokens", tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; `token` is the secret", body = CreatedToken),
        (status = 403, description = "Not an admin token", body = crate::error::Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = crate::error::Problem,
            content_type = "application/problem+json"),
    ))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(new): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require_admin()?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let id = Uuid::now_v7();
    let secret = new_secret();
    sqlx::query("INSERT INTO api_tokens (id, name, token_hash, scope) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(&hash_secret(&secret)[..])
        .bind(new.scope.as_str())
        .execute(&state.db)
        .await?;
    tracing::info!(token_id = %id, scope = new.scope.as_str(), by = %caller.token_id,
        "token created");
    let created = CreatedToken {
        id,
        name: name.to_owned(),
        scope: new.scope,
        token: secret,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists every token, newest first, without secrets (admin only).
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses(
        (status = 200, description = "Every token", body = Vec<Token>),
        (status = 403, description = "Not an admin token", body = crate::error::Problem,
            content_type = "application/problem+json"),
    ))]
async fn list_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Token>>> {
    caller.require_admin()?;
    let tokens = sqlx::query_as::<_, Token>(
        "SELECT id, name, scope, created_at, last_used_at, revoked_at FROM api_tokens \
         ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(tokens))
}

/// Revokes a token (admin only); requests made with it are refused from now on.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin token", body = crate::error::Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = crate::error::Problem,
            content_type = "application/problem+json"),
    ))]
async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let revoked =
        sqlx::query("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(&state.db)
            .await?;
    if revoked.rows_affected() == 0 {
        return Err(ApiError::NotFound("token"));
    }
    tracing::info!(token_id = %id, by = %caller.token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_by_power() {
        assert!(Scope::Read < Scope::Write && Scope::Write < Scope::Admin);
        let read = Caller {
            token_id: Uuid::nil(),
            scope: Scope::Read,
        };
        assert!(read.require_write().is_err());
        assert!(read.require_admin().is_err());
    }

    #[test]
    fn secrets_are_distinct_and_prefixed() {
        let a = new_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 48);
        assert_ne!(a, new_secret());
    }
}
