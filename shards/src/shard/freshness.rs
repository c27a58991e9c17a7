//! Freshness: renewing a stored version after the origin confirmed it is current.

use super::*;

impl Shard {
    /// Records that the version of `key` with this hlc was confirmed current by the origin
    /// at `validated_ms` (a revalidation answered 304): its body stays where it is. `false`
    /// when the key now holds another version (a write landed meanwhile) or nothing.
    /// Persisted in the index, not journaled: peers keep their own freshness.
    pub async fn renew(&self, key: &str, hlc: u64, validated_ms: u64) -> Result<bool, StoreError> {
        let core = &self.core;
        let ack = {
            let mut st = core.state.borrow_mut();
            let Some(old) = st.index.get(&core.journal, key) else {
                return Ok(false);
            };
            if old.hlc != hlc {
                return Ok(false);
            }
            if old.validated_ms >= validated_ms {
                return Ok(true);
            }
            let mut m = (*old).clone();
            m.validated_ms = validated_ms;
            // Keep what the layers above derived: the response head does not change.
            m.derived = old.derived.clone();
            let meta = Rc::new(m);
            st.index.replace(&core.journal, key, meta.clone());
            core.submit(vec![Op::PutEntry(
                key.to_owned(),
                StoredEntry::Object((*meta).clone()),
            )])?
        };
        Journal::wait(ack).await?;
        Ok(true)
    }
}
