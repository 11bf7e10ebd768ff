//! The rolling planner: a pure function from a service's slots (each with its instance's template and the
//! replacement being started) to the next replacements to begin, complete or cancel, with Kubernetes' semantics:
//! at most `replicas + max_surge` instances, and, counting an instance as available only once it has been healthy
//! for `min_healthy_time`, at least `replicas - max_unavailable` available (when the slots were all available to
//! begin with). New instances come first: without surge, an old instance stops only when a new one may take the
//! unavailability it leaves.

/// One slot as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    /// The slot's index.
    pub index: u32,
    /// The template its current instance runs.
    pub template: u64,
    /// Whether the current instance is available.
    pub available: bool,
    /// The replacement being started: its template and whether it is available.
    pub next: Option<(u64, bool)>,
}

/// What to do to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a replacement at the target template.
    Begin(u32),
    /// The replacement is available: make it the slot's instance (the old one drains and stops).
    Complete(u32),
    /// Drop a replacement at another template than the target (a rollback of a rollout under way).
    Cancel(u32),
}

/// How many instances a rollout may add and take away at once, resolved against the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Instances above the replicas (`max_surge`, rounded up).
    pub surge: u32,
    /// Instances below the replicas that may be unavailable (`max_unavailable`, rounded down); at least 1 when
    /// `surge` is 0, as Kubernetes refuses both at 0.
    pub unavailable: u32,
}

/// The next actions towards every slot running `target`; empty when done or waiting.
pub fn rolling(slots: &[SlotView], target: u64, budget: Budget) -> Vec<Action> {
    let mut actions = Vec::new();
    // In flight: replacements at the target not yet available.
    let mut in_flight = 0u32;
    // Unavailable now: slots whose serving instance (the current one, or with no surge the replacement that took
    // its place) is not available.
    let mut unavailable = 0u32;
    for slot in slots {
        match slot.next {
            Some((template, _)) if template != target => actions.push(Action::Cancel(slot.index)),
            Some((_, true)) => actions.push(Action::Complete(slot.index)),
            Some((_, false)) => {
                in_flight += 1;
                if budget.surge == 0 || !slot.available {
                    unavailable += 1;
                }
            }
            None if !slot.available => unavailable += 1,
            None => {}
        }
    }
    let mut candidates = slots
        .iter()
        .filter(|slot| slot.template != target && slot.next.is_none())
        // Unavailable old instances first: replacing them costs no availability.
        .map(|slot| (slot.available, slot.index))
        .collect::<Vec<_>>();
    candidates.sort_unstable();
    for (available, index) in candidates {
        if budget.surge > 0 {
            if in_flight >= budget.surge {
                break;
            }
        } else if available && unavailable >= budget.unavailable.max(1) {
            break;
        }
        in_flight += 1;
        if budget.surge == 0 && available {
            unavailable += 1;
        }
        actions.push(Action::Begin(index));
    }
    actions
}

/// Whether every slot runs `target` with no replacement under way.
pub fn done(slots: &[SlotView], target: u64) -> bool {
    slots
        .iter()
        .all(|slot| slot.template == target && slot.next.is_none())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A simulated runtime: every instance becomes available after a random number of rounds; in rolling without
    /// surge the old instance stops as its replacement begins.
    fn simulate(replicas: u32, budget: Budget, delays: &[u8]) -> Result<u32, String> {
        let mut slots: Vec<SlotView> = (0..replicas)
            .map(|index| SlotView {
                index,
                template: 1,
                available: true,
                next: None,
            })
            .collect();
        // Rounds left until each slot's replacement is available.
        let mut waiting = vec![0u8; replicas as usize];
        let mut delay = delays.iter().cycle();
        for round in 0..10_000u32 {
            if done(&slots, 2) {
                return Ok(round);
            }
            for action in rolling(&slots, 2, budget) {
                match action {
                    Action::Begin(index) => {
                        slots[index as usize].next = Some((2, false));
                        waiting[index as usize] = *delay.next().unwrap_or(&0);
                    }
                    Action::Complete(index) => {
                        let slot = &mut slots[index as usize];
                        slot.template = 2;
                        slot.available = true;
                        slot.next = None;
                    }
                    Action::Cancel(_) => return Err("nothing to cancel".into()),
                }
            }
            // What runs now, and what is available.
            let running: u32 = slots
                .iter()
                .map(|s| match s.next {
                    Some(_) if budget.surge == 0 => 1,
                    Some(_) => 2,
                    None => 1,
                })
                .sum();
            let available = slots
                .iter()
                .filter(|s| match s.next {
                    Some((_, ready)) if budget.surge == 0 => ready,
                    _ => s.available,
                })
                .count() as u32;
            if running > replicas + budget.surge {
                return Err(format!(
                    "{running} instances running, above {replicas} + {}",
                    budget.surge
                ));
            }
            if available + budget.unavailable.max(u32::from(budget.surge == 0)) < replicas {
                return Err(format!(
                    "{available} available, below {replicas} - {}",
                    budget.unavailable
                ));
            }
            for (slot, wait) in slots.iter_mut().zip(waiting.iter_mut()) {
                if let Some((template, false)) = slot.next {
                    if *wait == 0 {
                        slot.next = Some((template, true));
                    } else {
                        *wait -= 1;
                    }
                }
            }
        }
        Err("never finished".into())
    }

    proptest! {
        #[test]
        fn rolling_keeps_within_surge_and_unavailability(
            replicas in 1u32..12,
            surge in 0u32..4,
            unavailable in 0u32..4,
            delays in proptest::collection::vec(0u8..5, 1..8),
        ) {
            let budget = Budget { surge, unavailable: if surge == 0 { unavailable.max(1) } else { unavailable } };
            let outcome = simulate(replicas, budget, &delays);
            prop_assert!(outcome.is_ok(), "{outcome:?}");
        }
    }

    #[test]
    fn a_rollback_cancels_replacements_of_the_abandoned_template() {
        let slots = [
            SlotView {
                index: 0,
                template: 1,
                available: true,
                next: Some((2, false)),
            },
            SlotView {
                index: 1,
                template: 2,
                available: true,
                next: None,
            },
        ];
        let actions = rolling(
            &slots,
            1,
            Budget {
                surge: 1,
                unavailable: 0,
            },
        );
        assert_eq!(actions, [Action::Cancel(0), Action::Begin(1)]);
        assert!(!done(&slots, 1));
    }
}
