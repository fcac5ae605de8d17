//! sea-orm entities for the tables `clerk-sync-migrations` creates.

pub(crate) mod processed_events;
pub(crate) mod quarantined_events;
pub(crate) mod user_email_addresses;
pub(crate) mod users;
