//! sea-orm entities for the tables `clerk-sync-migrations` creates.

pub(crate) mod feed_head;
pub(crate) mod organization_changes;
pub(crate) mod organization_invitations;
pub(crate) mod organization_memberships;
pub(crate) mod organization_permissions;
pub(crate) mod organization_roles;
pub(crate) mod organizations;
pub(crate) mod processed_events;
pub(crate) mod quarantined_events;
pub(crate) mod reconcile_lease;
pub(crate) mod reconcile_passes;
pub(crate) mod user_changes;
pub(crate) mod user_email_addresses;
pub(crate) mod users;
