//! Experiments: named groups of runs, with a description and tags.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mpl_protocol::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Longest accepted experiment name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Longest accepted description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Most tags one experiment may carry.
const MAX_TAGS: usize = 50;
/// Longest accepted tag, in characters.
const MAX_TAG_CHARS: usize = 100;

/// The experiment routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_experiment, list_experiments))
        .routes(routes!(get_experiment, delete_experiment))
}

/// A named group of runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Experiment {
    pub id: Uuid,
    /// Unique among experiments.
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// How many runs belong to the experiment.
    pub run_count: i64,
    pub created_at: DateTime<Utc>,
}

/// The body of `POST /v1/experiments`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExperiment {
    /// 1 to 200 characters, unique.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl NewExperiment {
    /// Checks lengths and counts; returns every problem found.
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            errors.push(field_error(
                "name",
                format!("must be 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        let description = self.description.as_deref().unwrap_or_default();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            errors.push(field_error(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        let tags = self.tags.as_deref().unwrap_or_default();
        if tags.len() > MAX_TAGS {
            errors.push(field_error("tags", format!("at most {MAX_TAGS} tags")));
        }
        for (i, tag) in tags.iter().enumerate() {
            if tag.trim().is_empty() || tag.chars().count() > MAX_TAG_CHARS {
                errors.push(field_error(
                    &format!("tags[{i}]"),
                    format!("must be 1 to {MAX_TAG_CHARS} characters"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

fn field_error(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.into(),
        message,
    }
}

const SELECT_EXPERIMENT: &str = "SELECT e.id, e.name, e.description, e.tags, e.created_at, \
     (SELECT count(*) FROM runs r WHERE r.experiment_id = e.id) AS run_count \
     FROM experiments e";

/// Creates an experiment.
#[utoipa::path(post, path = "/experiments", tag = "experiments",
    request_body = NewExperiment,
    responses(
        (status = 201, description = "Created", body = Experiment),
        (status = 409, description = "An experiment with this name exists"),
        (status = 422, description = "A field is invalid"),
    ))]
async fn create_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewExperiment>,
) -> ApiResult<(StatusCode, Json<Experiment>)> {
    caller.require_write()?;
    body.validate()?;

    let inserted = sqlx::query(
        "INSERT INTO experiments (id, name, description, tags) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(body.name.trim())
    .bind(body.description.unwrap_or_default())
    .bind(body.tags.unwrap_or_default())
    .execute(&state.db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::Conflict(format!(
            "an experiment named {:?} already exists",
            body.name.trim()
        )));
    }

    let experiment =
        sqlx::query_as::<_, Experiment>(&format!("{SELECT_EXPERIMENT} WHERE e.name = $1"))
            .bind(body.name.trim())
            .fetch_one(&state.db)
            .await?;
    Ok((StatusCode::CREATED, Json(experiment)))
}

/// Lists every experiment, newest first.
#[utoipa::path(get, path = "/experiments", tag = "experiments",
    responses((status = 200, description = "Every experiment", body = [Experiment])))]
async fn list_experiments(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<Experiment>>> {
    let experiments = sqlx::query_as::<_, Experiment>(&format!(
        "{SELECT_EXPERIMENT} ORDER BY e.created_at DESC, e.id DESC"
    ))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(experiments))
}

/// Gets one experiment.
#[utoipa::path(get, path = "/experiments/{id}", tag = "experiments",
    params(("id" = Uuid, Path, description = "Experiment id")),
    responses(
        (status = 200, description = "The experiment", body = Experiment),
        (status = 404, description = "No such experiment"),
    ))]
async fn get_experiment(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Experiment>> {
    let experiment =
        sqlx::query_as::<_, Experiment>(&format!("{SELECT_EXPERIMENT} WHERE e.id = $1"))
            .bind(id)
            .fetch_optional(&state.db)
            .await?
            .ok_or(ApiError::NotFound("experiment"))?;
    Ok(Json(experiment))
}

/// Deletes an experiment that has no runs.
#[utoipa::path(delete, path = "/experiments/{id}", tag = "experiments",
    params(("id" = Uuid, Path, description = "Experiment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such experiment"),
        (status = 409, description = "The experiment still has runs"),
    ))]
async fn delete_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller.require_write()?;

    let deleted = sqlx::query(
        "DELETE FROM experiments e WHERE e.id = $1 \
         AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.id)",
    )
    .bind(id)
    .execute(&state.db)
    .await;
    match deleted {
        Ok(done) if done.rows_affected() == 1 => Ok(StatusCode::NO_CONTENT),
        Ok(_) => Err(experiment_missing_or_used(&state, id).await),
        // A run inserted concurrently trips the foreign key instead of the NOT EXISTS.
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(ApiError::Conflict(
            "the experiment has runs; delete or move them first".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Explains why a delete touched no row: the experiment is gone, or it still has runs.
async fn experiment_missing_or_used(state: &AppState, id: Uuid) -> ApiError {
    let exists =
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM experiments WHERE id = $1)")
            .bind(id)
            .fetch_one(&state.db)
            .await;
    match exists {
        Ok(true) => ApiError::Conflict("the experiment has runs; delete or move them first".into()),
        Ok(false) => ApiError::NotFound("experiment"),
        Err(e) => e.into(),
    }
}
