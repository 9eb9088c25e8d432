//! Tests of the writer on real SQLite files: group commit, poison handling, and the
//! replication log's pending entries on commit and rollback.

use rusqlite::Connection;

use crate::store::Tx;
use crate::store::log::LogState;

/// A store connection with a log state of its own, for testing SQL helpers off the writer.
pub(crate) struct Db {
    conn: Connection,
    log: LogState,
}

impl Db {
    pub(crate) fn in_memory() -> Db {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        Db {
            conn,
            log: LogState::default(),
        }
    }

    pub(crate) fn tx(&self) -> Tx<'_> {
        Tx::new(&self.conn, &self.log)
    }
}
