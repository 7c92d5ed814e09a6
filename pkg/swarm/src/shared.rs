//! [`Shared`]: a value shared copy-on-write by its clones.
//!
//! - The state's task and node maps: every API read, heartbeat and session check takes a clone
//!   of the applied state (`Daemon::view`), and with tens of thousands of tasks a deep copy each
//!   time was most of the leader's CPU. A clone is now a reference count; the state machine
//!   copies a map only when it changes it while a clone is still alive.
//! - A service's task template and the spec of each of its tasks: one copy per spec, not one per
//!   task (30,000 tasks held 30,000 equal copies), and the orchestrator's "is this task's spec
//!   the service's?" on every round is a pointer comparison.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Shared<T>(Arc<T>);

// Not derived: a clone shares the value, whether or not `T` itself is `Clone`.
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    /// The same allocation: equal without a look inside.
    pub fn same(a: &Shared<T>, b: &Shared<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T: PartialEq> Shared<T> {
    /// Takes `other`'s allocation when the values are equal, so that later comparisons of the
    /// two are pointer comparisons.
    pub fn share_with(&mut self, other: &Shared<T>) {
        if !Shared::same(self, other) && **self == **other {
            *self = other.clone();
        }
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Shared<T> {
        Shared::new(value)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        Shared::same(self, other) || *self.0 == *other.0
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_come_to_share_one_allocation() {
        let a = Shared::new(vec![1, 2]);
        let mut b = Shared::new(vec![1, 2]);
        assert!(!Shared::same(&a, &b));
        assert_eq!(a, b);
        b.share_with(&a);
        assert!(Shared::same(&a, &b));
        let mut c = Shared::new(vec![3]);
        c.share_with(&a);
        assert!(!Shared::same(&a, &c));
        // A change through one clone leaves the other alone.
        (*b).push(3);
        assert_eq!(*a, vec![1, 2]);
        assert_eq!(*b, vec![1, 2, 3]);
    }
}
