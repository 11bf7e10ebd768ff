//! The `placements` table: the placement planner's answer, one row per slot. Written only where it changed, in one
//! transaction per planning round.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::now_rfc3339;
use crate::placement::{Plan, Slot};

/// A stored slot: its node, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSlot {
    /// The agent id, when placed.
    pub node: Option<String>,
    /// Why it is unplaced (empty when placed).
    pub reason: String,
    /// When it last changed, RFC 3339.
    pub updated: String,
}

/// Every stored slot, of every service or of one.
///
/// # Errors
/// SQLite failed.
pub fn load(
    connection: &Connection,
    service: Option<&str>,
) -> rusqlite::Result<BTreeMap<Slot, StoredSlot>> {
    let mut statement = connection.prepare(
        "SELECT service, slot, node, reason, updated FROM placements WHERE ?1 IS NULL OR service = ?1",
    )?;
    let rows = statement.query_map([service], |row| {
        Ok((
            Slot {
                service: row.get(0)?,
                index: row.get::<_, i64>(1)? as u32,
            },
            StoredSlot {
                node: row.get(2)?,
                reason: row.get(3)?,
                updated: row.get(4)?,
            },
        ))
    })?;
    rows.collect()
}

/// What a planning round changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Slots given a node, or moved to another: (slot, from, to).
    pub moved: Vec<(Slot, Option<String>, Option<String>)>,
    /// Slots removed (their service shrank or is gone).
    pub removed: Vec<Slot>,
}

/// Writes `plan` over the stored slots inside the caller's transaction, touching only rows that changed.
///
/// # Errors
/// SQLite failed.
pub fn store(connection: &Connection, plan: &Plan) -> rusqlite::Result<Changes> {
    let stored = load(connection, None)?;
    let now = now_rfc3339();
    let mut changes = Changes::default();
    let wanted = plan
        .placements
        .iter()
        .map(|(slot, node)| (slot, Some(node.as_str()), ""))
        .chain(
            plan.unplaced
                .iter()
                .map(|(slot, why)| (slot, None, why.as_str())),
        );
    for (slot, node, reason) in wanted {
        let before = stored.get(slot);
        if before.is_some_and(|b| b.node.as_deref() == node && b.reason == reason) {
            continue;
        }
        connection.execute(
            "INSERT INTO placements (service, slot, node, reason, updated) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (service, slot) DO UPDATE SET node = excluded.node, reason = excluded.reason,
             updated = excluded.updated",
            params![slot.service, i64::from(slot.index), node, reason, now],
        )?;
        let from = before.and_then(|b| b.node.clone());
        if from.as_deref() != node {
            changes
                .moved
                .push((slot.clone(), from, node.map(str::to_owned)));
        }
    }
    for slot in stored.keys() {
        if !plan.placements.contains_key(slot) && !plan.unplaced.contains_key(slot) {
            connection.execute(
                "DELETE FROM placements WHERE service = ?1 AND slot = ?2",
                params![slot.service, i64::from(slot.index)],
            )?;
            changes.removed.push(slot.clone());
        }
    }
    Ok(changes)
}
