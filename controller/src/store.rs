//! The controller's state: one SQL database, embedded SQLite by default or
//! PostgreSQL when several controllers share a deployment. The same portable
//! SQL (and the same migrations) serves both through sqlx's `Any` driver;
//! queries use `$1, $2, ...` placeholders, which both engines accept when each
//! first appears in order.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub engine: Engine,
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match engine {
                // One writer at a time is SQLite's model; a small pool still
                // lets reads proceed alongside.
                Engine::Sqlite => 4,
                Engine::Postgres => 16,
            })
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, engine })
    }

    pub async fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = a.bind(q);
        }
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    pub async fn fetch_all(
        &self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = a.bind(q);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    pub async fn fetch_optional(
        &self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Option<AnyRow>, StoreError> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = a.bind(q);
        }
        Ok(q.fetch_optional(&self.pool).await?)
    }
}

/// One statement of [`Store::atomically`], and how many rows it must touch for
/// the whole to go ahead.
pub struct Step<'a> {
    pub sql: &'a str,
    pub args: &'a [Value<'a>],
    /// `Some(n)`: unless exactly n rows change, nothing of the whole is kept.
    pub rows: Option<u64>,
}

impl Store {
    /// Runs `steps` in one transaction: all of them, or (when a step's row
    /// count is not the one it needs, or on any error) none. Returns whether
    /// they were applied.
    pub async fn atomically(&self, steps: &[Step<'_>]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for step in steps {
            let mut q = sqlx::query(step.sql);
            for a in step.args {
                q = a.bind(q);
            }
            let changed = q.execute(&mut *tx).await?.rows_affected();
            if step.rows.is_some_and(|n| n != changed) {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// A query argument.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl Value<'_> {
    fn bind<'q>(self, q: AnyQuery<'q>) -> AnyQuery<'q> {
        match self {
            Value::Text(s) => q.bind(s.to_owned()),
            Value::OptText(s) => q.bind(s.map(str::to_owned)),
            Value::Int(i) => q.bind(i),
            Value::OptInt(i) => q.bind(i),
            // Flags are BIGINT 0/1: the Any driver cannot carry SQLite booleans.
            Value::Bool(b) => q.bind(i64::from(b)),
        }
    }
}

/// Reads a text column.
pub fn text(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    Ok(row.try_get::<String, _>(col)?)
}

pub fn opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

pub fn int(row: &AnyRow, col: &str) -> Result<i64, StoreError> {
    Ok(row.try_get::<i64, _>(col)?)
}

pub fn opt_int(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

pub fn boolean(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// A store in a fresh SQLite file, for unit tests; the file lives as long as
/// the returned directory.
#[cfg(test)]
pub async fn temp_sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    let store = Store::open(&url).await.expect("open the test store");
    (dir, store)
}
