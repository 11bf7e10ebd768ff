//! The `nodes` table: what the plane keeps of each node that heartbeats, written when a node registers or its facts
//! or owner change (and every node at a clean stop), so the writes follow what changed, not the heartbeat rate.

use std::path::Path;

use gantry_proto::{NodeFacts, NodeShipping};
use rusqlite::params;
use serde::Deserialize;

use super::{StateDb, StateError, retire};

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredNode {
    /// First registration, RFC 3339.
    pub registered: String,
    /// Last heartbeat known at the write, RFC 3339.
    pub last_seen: String,
    /// The heartbeat interval it announced, ms.
    pub interval_ms: u64,
    /// Its facts.
    pub facts: NodeFacts,
    /// Its shipping figures at the write.
    pub shipping: NodeShipping,
    /// Id of the token that registered it (empty: the next heartbeat's token claims it).
    #[serde(default)]
    pub token_id: String,
}

/// Every stored node.
///
/// # Errors
/// The database failed, or a row's JSON does not parse.
pub fn load_all(db: &StateDb) -> Result<Vec<StoredNode>, StateError> {
    db.read(|c| {
        let mut statement = c.prepare(
            "SELECT registered, last_seen, interval_ms, facts, shipping, token_id FROM nodes ORDER BY agent_id",
        )?;
        let rows = statement.query_map([], |row| {
            let json = |index: usize, text: String| {
                rusqlite::Error::FromSqlConversionFailure(
                    index,
                    rusqlite::types::Type::Text,
                    Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, text)),
                )
            };
            let facts: String = row.get(3)?;
            let shipping: String = row.get(4)?;
            Ok(StoredNode {
                registered: row.get(0)?,
                last_seen: row.get(1)?,
                interval_ms: row.get::<_, i64>(2)?.max(0) as u64,
                facts: serde_json::from_str(&facts).map_err(|e| json(3, e.to_string()))?,
                shipping: serde_json::from_str(&shipping).map_err(|e| json(4, e.to_string()))?,
                token_id: row.get(5)?,
            })
        })?;
        rows.collect()
    })
}

/// Inserts or replaces `nodes` in one transaction. Blocking (a committed write).
///
/// # Errors
/// The database failed; none of them is written then.
pub fn upsert(db: &StateDb, nodes: &[StoredNode]) -> Result<(), StateError> {
    if nodes.is_empty() {
        return Ok(());
    }
    db.write(|t| upsert_in(db, t, nodes))
}

fn upsert_in(
    db: &StateDb,
    t: &rusqlite::Transaction<'_>,
    nodes: &[StoredNode],
) -> Result<(), StateError> {
    let mut statement = t
        .prepare_cached(
            "INSERT INTO nodes (agent_id, token_id, registered, last_seen, interval_ms, facts, shipping)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (agent_id) DO UPDATE SET
                 token_id = excluded.token_id, registered = excluded.registered,
                 last_seen = excluded.last_seen, interval_ms = excluded.interval_ms,
                 facts = excluded.facts, shipping = excluded.shipping",
        )
        .map_err(|e| db.error(e))?;
    for node in nodes {
        let facts = serde_json::to_string(&node.facts).expect("node facts serialize");
        let shipping = serde_json::to_string(&node.shipping).expect("shipping figures serialize");
        statement
            .execute(params![
                node.facts.agent_id,
                node.token_id,
                node.registered,
                node.last_seen,
                node.interval_ms as i64,
                facts,
                shipping
            ])
            .map_err(|e| db.error(e))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct LegacyFile {
    nodes: Vec<StoredNode>,
}

/// Imports `DATA_DIR/nodes.json` of an earlier version, then renames it `nodes.json.migrated`. A file that does not
/// parse is renamed `nodes.json.corrupt` instead: agents register again with their next heartbeat.
pub(super) fn import_legacy(db: &StateDb, data_dir: &Path) -> Result<(), StateError> {
    let path = data_dir.join("nodes.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    match serde_json::from_slice::<LegacyFile>(&bytes) {
        Ok(file) => {
            db.write(|t| upsert_in(db, t, &file.nodes))?;
            tracing::info!(nodes = file.nodes.len(), "legacy nodes imported");
            retire(&path)
        }
        Err(error) => {
            let aside = path.with_extension("json.corrupt");
            tracing::error!(error = %error, path = %path.display(), moved_to = %aside.display(),
                "legacy node registry is corrupt; not imported, nodes register again with their next heartbeat");
            std::fs::rename(&path, &aside).map_err(|source| StateError::Io { path, source })
        }
    }
}
