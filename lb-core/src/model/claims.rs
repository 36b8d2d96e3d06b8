//! Who serves a frontend that several Services claim: the first by
//! namespace/name, as if Services were processed in that order. The others
//! are remembered, so that when the winner goes away or lets go of the
//! frontend, the next one takes over without re-reading every Service.

use std::collections::BTreeMap;

use super::{DesiredFrontend, Frontend, ObjectRef};

/// The claims that lost, per frontend. The winners live in the
/// `frontends` map passed to each call (the `Desired` being maintained).
#[derive(Debug, Default)]
pub(super) struct Claims {
    losers: BTreeMap<Frontend, BTreeMap<ObjectRef, DesiredFrontend>>,
}

/// How a claim or withdrawal changed what `frontend` serves.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Nothing programmed changed.
    Unchanged,
    /// Same winner, new backends or port name.
    Updated,
    /// Another Service (or none) serves the frontend now.
    NewWinner {
        before: Option<ObjectRef>,
        after: Option<ObjectRef>,
    },
}

impl Claims {
    /// `wanted.service` claims `frontend` (again, perhaps with new backends).
    pub(super) fn claim(
        &mut self,
        frontends: &mut BTreeMap<Frontend, DesiredFrontend>,
        frontend: Frontend,
        wanted: DesiredFrontend,
    ) -> Outcome {
        let Some(winner) = frontends.get_mut(&frontend) else {
            let after = Some(wanted.service.clone());
            frontends.insert(frontend, wanted);
            return Outcome::NewWinner {
                before: None,
                after,
            };
        };
        if winner.service == wanted.service {
            if *winner == wanted {
                return Outcome::Unchanged;
            }
            *winner = wanted;
            return Outcome::Updated;
        }
        let losers = self.losers.entry(frontend).or_default();
        if wanted.service > winner.service {
            losers.insert(wanted.service.clone(), wanted);
            return Outcome::Unchanged;
        }
        // The newcomer sorts first; it may have been a loser until now.
        losers.remove(&wanted.service);
        let after = Some(wanted.service.clone());
        let before = std::mem::replace(winner, wanted);
        let outcome = Outcome::NewWinner {
            before: Some(before.service.clone()),
            after,
        };
        losers.insert(before.service.clone(), before);
        outcome
    }

    /// `service` no longer claims `frontend`.
    pub(super) fn withdraw(
        &mut self,
        frontends: &mut BTreeMap<Frontend, DesiredFrontend>,
        frontend: Frontend,
        service: &ObjectRef,
    ) -> Outcome {
        let losers = self.losers.get_mut(&frontend);
        if frontends.get(&frontend).map(|w| &w.service) != Some(service) {
            if let Some(losers) = losers {
                losers.remove(service);
                if losers.is_empty() {
                    self.losers.remove(&frontend);
                }
            }
            return Outcome::Unchanged;
        }
        let next = losers.and_then(BTreeMap::pop_first);
        if self.losers.get(&frontend).is_some_and(BTreeMap::is_empty) {
            self.losers.remove(&frontend);
        }
        let after = next.as_ref().map(|(s, _)| s.clone());
        match next {
            Some((_, wanted)) => frontends.insert(frontend, wanted),
            None => frontends.remove(&frontend),
        };
        Outcome::NewWinner {
            before: Some(service.clone()),
            after,
        }
    }

    /// The Services that lost `frontend` to its winner.
    pub(super) fn losers(&self, frontend: &Frontend) -> impl Iterator<Item = &ObjectRef> {
        self.losers
            .get(frontend)
            .into_iter()
            .flat_map(BTreeMap::keys)
    }
}
