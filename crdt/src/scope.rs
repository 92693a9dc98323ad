//! The content check for site-scoped writers: which objects does a change touch?
//!
//! [`authorize`](crate::authorize) decides from the envelope alone whether an author and caller
//! may write a document at all. A site-scoped writer may in addition touch only the objects of
//! its site, the keys `<site>/…` of `site_routes` and `site_node_overrides`. That is a property
//! of the change's operations, so it is checked on them before the change is applied: every
//! operation's target (object path plus key) must lie under one of those keys.
//!
//! An operation names its object by id; the path of an object comes from the document (for
//! objects that exist) or from the `make` operations of changes checked earlier in the same
//! batch (for objects those changes create). An object found in neither means the change
//! depends on changes this node does not have yet: it is refused as
//! [`RemoteError::MissingDependencies`](crate::RemoteError::MissingDependencies), never guessed.

use std::collections::HashMap;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{ActorId, Automerge, Change, Prop, ReadDoc};

use crate::model::split_site_key;

/// The outcome of a failed scope check.
pub(crate) enum ScopeFailure {
    /// The change touches `path`, outside the writer's site.
    Outside(String),
    /// An object the change refers to is unknown here.
    Unresolved(String),
}

/// One step of a path: a map key, or a position in a list (positions do not matter here).
#[derive(Clone)]
enum Step {
    Key(String),
    Element,
}

impl Step {
    fn from_key(key: &Key) -> Step {
        match key {
            Key::Map(k) => Step::Key(k.to_string()),
            Key::Seq(_) => Step::Element,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Step::Key(k) => k,
            Step::Element => "[]",
        }
    }
}

/// Deepest object nesting followed before giving up (the models nest four levels).
const MAX_DEPTH: usize = 64;

/// Resolves object paths for a batch of changes checked in order against one document.
pub(crate) struct ScopeChecker<'a> {
    doc: &'a Automerge,
    /// Objects made by earlier changes of the batch: (counter, actor) -> (parent, key).
    created: HashMap<(u64, ActorId), (ObjectId, Step)>,
}

impl<'a> ScopeChecker<'a> {
    pub(crate) fn new(doc: &'a Automerge) -> ScopeChecker<'a> {
        ScopeChecker {
            doc,
            created: HashMap::new(),
        }
    }

    /// Records the objects `change` makes, so later changes of the batch may refer to them.
    pub(crate) fn register(&mut self, change: &Change) {
        let expanded = change.decode();
        let start = expanded.start_op.get();
        for (i, op) in expanded.operations.iter().enumerate() {
            if matches!(op.action, OpType::Make(_)) {
                self.created.insert(
                    (start + i as u64, expanded.actor_id.clone()),
                    (op.obj.clone(), Step::from_key(&op.key)),
                );
            }
        }
    }

    /// The target of every operation of `change` (object path plus the key written), after
    /// registering the objects it makes.
    pub(crate) fn op_targets(&mut self, change: &Change) -> Result<Vec<Vec<String>>, ScopeFailure> {
        self.register(change);
        let expanded = change.decode();
        let mut targets = Vec::with_capacity(expanded.operations.len());
        for op in &expanded.operations {
            let mut path = self.path_of(&op.obj)?;
            path.push(Step::from_key(&op.key));
            targets.push(path.iter().map(|s| s.as_str().to_string()).collect());
        }
        Ok(targets)
    }

    /// Checks that every operation of `change` targets an object of `site`, then registers it.
    pub(crate) fn check_site(&mut self, change: &Change, site: &str) -> Result<(), ScopeFailure> {
        for path in self.op_targets(change)? {
            if !within_site(&path, site) {
                return Err(ScopeFailure::Outside(path.join(".")));
            }
        }
        Ok(())
    }

    fn path_of(&self, obj: &ObjectId) -> Result<Vec<Step>, ScopeFailure> {
        let mut suffix = Vec::new();
        let mut current = obj.clone();
        for _ in 0..MAX_DEPTH {
            let id = match &current {
                ObjectId::Root => {
                    suffix.reverse();
                    return Ok(suffix);
                }
                ObjectId::Id(id) => id,
            };
            if let Some((parent, step)) = self.created.get(&(id.counter(), id.actor().clone())) {
                suffix.push(step.clone());
                current = parent.clone();
                continue;
            }
            let mut path = self.doc_path(id.counter(), id.actor())?;
            suffix.reverse();
            path.extend(suffix);
            return Ok(path);
        }
        Err(ScopeFailure::Unresolved("objects nested too deeply".into()))
    }

    /// The path of an object that exists in the document.
    fn doc_path(&self, counter: u64, actor: &ActorId) -> Result<Vec<Step>, ScopeFailure> {
        let text = format!("{counter}@{actor}");
        let unresolved = || ScopeFailure::Unresolved(format!("object {text}"));
        // `import_obj` is automerge's (doc-hidden) way from a printed object id to an `ObjId`;
        // the tests in this crate cover it, so an automerge upgrade that changes it fails loudly.
        let exid = self.doc.import_obj(&text).map_err(|_| unresolved())?;
        let parents = self.doc.parents(&exid).map_err(|_| unresolved())?;
        Ok(parents
            .path()
            .into_iter()
            .map(|(_, prop)| match prop {
                Prop::Map(k) => Step::Key(k),
                Prop::Seq(_) => Step::Element,
            })
            .collect())
    }
}

/// Is `path` (object path plus the key an operation writes) inside `site`'s objects?
fn within_site(path: &[String], site: &str) -> bool {
    let [collection, key, ..] = path else {
        return false;
    };
    matches!(collection.as_str(), "site_routes" | "site_node_overrides")
        && split_site_key(key).is_some_and(|(s, _)| s == site)
}
