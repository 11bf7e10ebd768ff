//! The `placements` table: the placement planner's answer, one row per slot, with the slot's instance: its
//! generation (`epoch`) and the template revision it runs (`template`); and the replacement being started for it
//! (`next_node`, `next_epoch`, `next_template`) during a restart, a drain or a rollout. And the `drained_nodes`
//! table. Written only where it changed, in one transaction per planning round.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::now_rfc3339;
use crate::placement::{Plan, Slot};

/// A stored slot: its node, or why it has none, and a replacement in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSlot {
    /// The agent id, when placed.
    pub node: Option<String>,
    /// Why it is unplaced (empty when placed).
    pub reason: String,
    /// When it last changed, RFC 3339.
    pub updated: String,
    /// The generation of its instance: 0 at first, higher at each restart, move or rollout step.
    pub epoch: u64,
    /// The template revision its instance runs.
    pub template: u64,
    /// The replacement being started, while the current instance still serves.
    pub next: Option<Next>,
}

/// A slot's replacement instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Its node.
    pub node: String,
    /// Its generation.
    pub epoch: u64,
    /// Its template revision (the slot's own for a restart or a drain; the new one in a rollout).
    pub template: u64,
}

impl StoredSlot {
    /// The id of the slot's current instance.
    pub fn instance_id(&self, slot: &Slot) -> String {
        instance_id(&slot.service, slot.index, self.template, self.epoch)
    }

    /// The id of its replacement, when one is being started.
    pub fn next_instance_id(&self, slot: &Slot) -> Option<String> {
        self.next
            .as_ref()
            .map(|next| instance_id(&slot.service, slot.index, next.template, next.epoch))
    }
}

/// The id of the instance of a slot: `<service>-<slot>-r<template revision>`, and `-e<epoch>` after its first
/// replacement. Unique per process lineage, so that a repeated answer never starts a second one.
pub fn instance_id(service: &str, slot: u32, template: u64, epoch: u64) -> String {
    if epoch == 0 {
        format!("{service}-{slot}-r{template}")
    } else {
        format!("{service}-{slot}-r{template}-e{epoch}")
    }
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
        "SELECT service, slot, node, reason, updated, epoch, next_node, next_epoch, template, next_template
         FROM placements WHERE ?1 IS NULL OR service = ?1",
    )?;
    let rows = statement.query_map([service], |row| {
        let next_node: Option<String> = row.get(6)?;
        let next_epoch: Option<i64> = row.get(7)?;
        let template = row.get::<_, i64>(8)? as u64;
        let next_template: Option<i64> = row.get(9)?;
        Ok((
            Slot {
                service: row.get(0)?,
                index: row.get::<_, i64>(1)? as u32,
            },
            StoredSlot {
                node: row.get(2)?,
                reason: row.get(3)?,
                updated: row.get(4)?,
                epoch: row.get::<_, i64>(5)? as u64,
                template,
                next: next_node.zip(next_epoch).map(|(node, epoch)| Next {
                    node,
                    epoch: epoch as u64,
                    template: next_template.map_or(template, |t| t as u64),
                }),
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
    /// Replacements started or completed.
    pub replaced: Vec<Slot>,
}

impl Changes {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        !self.moved.is_empty() || !self.removed.is_empty() || !self.replaced.is_empty()
    }
}

/// Writes `plan` over the stored slots inside the caller's transaction, touching only rows that changed. A slot
/// that moves gets a new generation, and loses a replacement in progress; a new slot runs its service's template
/// in `templates` (the stable one during a rollout).
///
/// # Errors
/// SQLite failed.
pub fn store(
    connection: &Connection,
    plan: &Plan,
    templates: &std::collections::HashMap<String, u64>,
) -> rusqlite::Result<Changes> {
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
        let from = before.and_then(|b| b.node.clone());
        let moved = from.as_deref() != node;
        // A moved slot's instance is a new one: a generation never issued to the slot before.
        let epoch = match before {
            Some(b) if moved && from.is_some() => issued(connection, slot)?.max(b.epoch) + 1,
            Some(b) => b.epoch,
            None => 0,
        };
        // A slot placed anew runs its service's template of the moment (the stable one during a canary or
        // blue-green rollout); one that stays keeps its own.
        let template = match before {
            Some(b) if !moved => b.template,
            _ => templates
                .get(&slot.service)
                .copied()
                .or(before.map(|b| b.template))
                .unwrap_or(0),
        };
        connection.execute(
            "INSERT INTO placements (service, slot, node, reason, updated, epoch, template, issued)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)
             ON CONFLICT (service, slot) DO UPDATE SET node = excluded.node, reason = excluded.reason,
             updated = excluded.updated, epoch = excluded.epoch, issued = MAX(placements.issued, excluded.epoch),
             next_node = CASE WHEN placements.node IS excluded.node THEN placements.next_node END,
             next_epoch = CASE WHEN placements.node IS excluded.node THEN placements.next_epoch END,
             next_template = CASE WHEN placements.node IS excluded.node THEN placements.next_template END",
            params![slot.service, i64::from(slot.index), node, reason, now, epoch as i64, template as i64],
        )?;
        if moved {
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

/// The highest generation ever issued to `slot` (0 for a slot never stored).
fn issued(connection: &Connection, slot: &Slot) -> rusqlite::Result<u64> {
    let issued: Option<i64> = connection
        .query_row(
            "SELECT MAX(issued, epoch, COALESCE(next_epoch, 0)) FROM placements WHERE service = ?1 AND slot = ?2",
            params![slot.service, i64::from(slot.index)],
            |row| row.get(0),
        )
        .optional()?;
    Ok(issued.unwrap_or(0) as u64)
}

/// Starts a replacement of `slot` on `node` running `template`, with a generation of at least `at_least` and never
/// issued to the slot before (so its instance id is new even when a replacement was started and cancelled before).
/// Returns the generation.
///
/// # Errors
/// SQLite failed.
pub fn begin_replacement(
    connection: &Connection,
    slot: &Slot,
    node: &str,
    at_least: u64,
    template: u64,
) -> rusqlite::Result<u64> {
    let epoch = at_least.max(issued(connection, slot)? + 1);
    connection.execute(
        "UPDATE placements SET next_node = ?3, next_epoch = ?4, next_template = ?6, issued = MAX(issued, ?4),
         updated = ?5 WHERE service = ?1 AND slot = ?2",
        params![slot.service, i64::from(slot.index), node, epoch as i64, now_rfc3339(), template as i64],
    )?;
    Ok(epoch)
}

/// Makes the replacement of `slot` its instance (the old one is no longer assigned: drained, then stopped).
///
/// # Errors
/// SQLite failed.
pub fn complete_replacement(connection: &Connection, slot: &Slot) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE placements SET node = next_node, epoch = next_epoch, template = COALESCE(next_template, template),
         next_node = NULL, next_epoch = NULL, next_template = NULL, updated = ?3
         WHERE service = ?1 AND slot = ?2 AND next_node IS NOT NULL",
        params![slot.service, i64::from(slot.index), now_rfc3339()],
    )?;
    Ok(())
}

/// Drops the replacement being started for `slot` (its instance is no longer assigned: stopped); the current
/// instance goes on.
///
/// # Errors
/// SQLite failed.
pub fn cancel_replacement(connection: &Connection, slot: &Slot) -> rusqlite::Result<()> {
    connection.execute(
        "UPDATE placements SET next_node = NULL, next_epoch = NULL, next_template = NULL, updated = ?3
         WHERE service = ?1 AND slot = ?2 AND next_node IS NOT NULL",
        params![slot.service, i64::from(slot.index), now_rfc3339()],
    )?;
    Ok(())
}

/// The drained nodes' agent ids.
///
/// # Errors
/// SQLite failed.
pub fn drained(connection: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut statement = connection.prepare("SELECT agent_id FROM drained_nodes")?;
    let rows = statement.query_map([], |row| row.get(0))?;
    rows.collect()
}

/// Marks a node drained (`true`) or eligible again; returns whether that changed anything.
///
/// # Errors
/// SQLite failed.
pub fn set_drained(
    connection: &Connection,
    agent_id: &str,
    drained: bool,
) -> rusqlite::Result<bool> {
    let changed = if drained {
        connection.execute(
            "INSERT INTO drained_nodes (agent_id, since) VALUES (?1, ?2) ON CONFLICT (agent_id) DO NOTHING",
            params![agent_id, now_rfc3339()],
        )?
    } else {
        connection.execute("DELETE FROM drained_nodes WHERE agent_id = ?1", [agent_id])?
    };
    Ok(changed > 0)
}

#[cfg(test)]
mod tests {
    use super::instance_id;

    #[test]
    fn instance_ids_name_the_generation_after_the_first() {
        assert_eq!(instance_id("api", 2, 3, 0), "api-2-r3");
        assert_eq!(instance_id("api", 2, 3, 1), "api-2-r3-e1");
    }
}
