//! The store's reads of users: by id ([`Store::get_user`],
//! [`Store::get_users`]), by verified address ([`Store::find_by_email`]) and
//! a page at a time ([`Store::list_users`]). Point reads go through the read
//! cache when there is one (the `cache` module says why a fill never goes
//! stale); every database read takes the read pool, never a writer's
//! connection. Queries arrive typed ([`ListQuery`]): requests are parsed at
//! the gRPC edge.

use std::{collections::HashMap, sync::Arc};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::{
    ListQuery, Page, Store,
    cache::{ReadCache, Ticket, has_verified},
    entity::{user_email_addresses, users},
    rows::profile_from_row,
};
use crate::{
    domain::{Millis, StoredUser, UserId},
    error::Error,
    metrics,
};

impl Store {
    /// The live user with this id.
    pub async fn get_user(&self, id: &UserId) -> Result<Arc<StoredUser>, Error> {
        self.cached_user(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {} not found", id.as_str())))
    }

    /// Whether the live user `id` is banned (`None`: no live user).
    pub(super) async fn live_user_banned(&self, id: &UserId) -> Result<Option<bool>, Error> {
        Ok(self.cached_user(id).await?.map(|user| user.state.banned))
    }

    /// The live user with this id, from the cache (shared, not copied) or
    /// else the database.
    async fn cached_user(&self, id: &UserId) -> Result<Option<Arc<StoredUser>>, Error> {
        let Some(cache) = self.cache.as_deref() else {
            return self.load_user(id).await;
        };
        if let Some(user) = cache.user(id) {
            metrics::record_user_cache("id", true);
            return Ok(Some(user));
        }
        metrics::record_user_cache("id", false);
        let ticket = cache.user_ticket(id);
        let user = self.load_user(id).await?;
        if let Some(user) = &user {
            cache.fill_user(ticket, user);
        }
        Ok(user)
    }

    async fn load_user(&self, id: &UserId) -> Result<Option<Arc<StoredUser>>, Error> {
        users::Entity::find_by_id(id.as_str())
            .filter(users::Column::DeletedAt.is_null())
            .one(&self.reads)
            .await?
            .map(|row| profile_from_row(row).map(|profile| Arc::new(StoredUser::new(profile))))
            .transpose()
    }

    /// The live user of each of `ids`, in their order (`None` where none is
    /// live). Those the cache holds come from it, the others from the
    /// database in one query, and are offered to the cache (whose eviction
    /// keeps a scan of the directory from pushing out the users asked for
    /// often).
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<Option<Arc<StoredUser>>>, Error> {
        let Some(cache) = self.cache.as_deref() else {
            let mut loaded = by_id(self.load_users(ids.iter()).await?);
            return Ok(ids.iter().map(|id| loaded.remove(id)).collect());
        };
        let mut found = cache.users(ids);
        let missed: HashMap<&UserId, Ticket> = (ids.iter().zip(&found))
            .filter(|(_, user)| user.is_none())
            .map(|(id, _)| (id, cache.user_ticket(id)))
            .collect();
        metrics::record_user_cache_counts("id", ids.len() - missed.len(), missed.len());
        if missed.is_empty() {
            return Ok(found);
        }
        let mut loaded = by_id(self.load_users(missed.keys().copied()).await?);
        for (id, slot) in ids.iter().zip(&mut found) {
            if slot.is_none() {
                *slot = loaded.remove(id);
                if let Some(user) = slot {
                    cache.fill_user(missed[id], user);
                }
            }
        }
        Ok(found)
    }

    async fn load_users(
        &self,
        ids: impl Iterator<Item = &UserId>,
    ) -> Result<Vec<Arc<StoredUser>>, Error> {
        users::Entity::find()
            .filter(users::Column::Id.is_in(ids.map(UserId::as_str)))
            .filter(users::Column::DeletedAt.is_null())
            .all(&self.reads)
            .await?
            .into_iter()
            .map(|row| profile_from_row(row).map(|profile| Arc::new(StoredUser::new(profile))))
            .collect()
    }

    /// The live user owning `email` (any of their verified addresses,
    /// case-insensitive); if several have it verified, the most recently
    /// updated.
    pub async fn find_by_email(&self, email: &str) -> Result<Arc<StoredUser>, Error> {
        let key = email.to_lowercase();
        let owner = match self.cache.as_deref() {
            None => self.load_by_email(&key).await?,
            Some(cache) => self.cached_by_email(cache, key).await?,
        };
        // The address is personal data: the answer does not repeat it.
        owner.ok_or_else(|| Error::NotFound("no user has this verified email address".into()))
    }

    /// The owner of the address `key`: the cached owner if it is live and
    /// still has the address verified (a newer owner's write would have
    /// dropped the entry), else the database's answer.
    async fn cached_by_email(
        &self,
        cache: &ReadCache,
        key: String,
    ) -> Result<Option<Arc<StoredUser>>, Error> {
        if let Some(owner) = cache.email_owner(&key) {
            match self.cached_user(&owner).await? {
                Some(user) if has_verified(&user, &key) => {
                    metrics::record_user_cache("email", true);
                    return Ok(Some(user));
                }
                // Dropping an entry can never make the cache stale.
                _ => cache.forget_email(&key),
            }
        }
        metrics::record_user_cache("email", false);
        let ticket = cache.email_ticket(&key);
        let owner = self.load_by_email(&key).await?;
        if let Some(owner) = &owner {
            cache.fill_email(ticket, key, owner.id.clone());
        }
        Ok(owner)
    }

    async fn load_by_email(&self, key: &str) -> Result<Option<Arc<StoredUser>>, Error> {
        // Two lookups by key rather than one join: a join leaves the planner
        // free to scan `users` (PostgreSQL did, with statistics taken while
        // the table was still small); these cannot be planned but by index.
        let holders: Vec<String> = user_email_addresses::Entity::find()
            .select_only()
            .column(user_email_addresses::Column::UserId)
            .filter(user_email_addresses::Column::EmailLower.eq(key))
            .into_tuple()
            .all(&self.reads)
            .await?;
        if holders.is_empty() {
            return Ok(None);
        }
        users::Entity::find()
            .filter(users::Column::Id.is_in(holders))
            .filter(users::Column::DeletedAt.is_null())
            .order_by_desc(users::Column::UpdatedAt)
            .order_by_asc(users::Column::Id)
            .one(&self.reads)
            .await?
            .map(|row| profile_from_row(row).map(|profile| Arc::new(StoredUser::new(profile))))
            .transpose()
    }

    /// One page of live users in (updated_at, id) order. With a cache, the
    /// database gives the page's keys only (from the `(updated_at, id)`
    /// index) and the users as [`Store::get_users`] gives them: a user's
    /// columns are decoded and its JSON parsed only on a miss.
    pub async fn list_users(&self, query: &ListQuery) -> Result<Page, Error> {
        let select = page_select(query);
        if self.cache.is_none() {
            let mut rows = select.all(&self.reads).await?;
            let has_more = rows.len() > query.page_size as usize;
            rows.truncate(query.page_size as usize);
            let users = rows
                .into_iter()
                .map(|row| profile_from_row(row).map(|profile| Arc::new(StoredUser::new(profile))))
                .collect::<Result<Vec<_>, _>>()?;
            let next = users.last().filter(|_| has_more);
            let next = next.map(|last| (last.updated_at, last.id.clone()));
            return Ok(query.page(users, next));
        }
        let keys = select
            .select_only()
            .columns([users::Column::UpdatedAt, users::Column::Id]);
        let mut keys: Vec<(Millis, String)> = match self.reads.get_database_backend() {
            DbBackend::Sqlite => self.sqlite_page_keys(keys).await?,
            _ => keys.into_tuple().all(&self.reads).await?,
        };
        let has_more = keys.len() > query.page_size as usize;
        keys.truncate(query.page_size as usize);
        let ids = keys
            .into_iter()
            .map(|(updated_at, id)| {
                let id = UserId::parse(id, "id")
                    .map_err(|_| Error::Corrupt("a user with an empty id".into()))?;
                Ok((updated_at, id))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let next = ids.last().filter(|_| has_more).cloned();
        let wanted: Vec<UserId> = ids.into_iter().map(|(_, id)| id).collect();
        // In the page's order. A user deleted since the keys were read is
        // left out; one changed since is served as it is now, unless the
        // change took it out of the filter. The next page starts after the
        // keys read, whatever changed.
        let users = (self.get_users(&wanted).await?.into_iter().flatten())
            .filter(|user| {
                query
                    .banned
                    .is_none_or(|banned| user.state.banned == banned)
            })
            .collect();
        Ok(query.page(users, next))
    }

    /// The (updated_at, id) keys `keys` selects, in its order, as one row:
    /// sqlx hands each SQLite row from the connection's thread to the
    /// caller's on its own, and a hundred hand-offs cost more than the page.
    async fn sqlite_page_keys(
        &self,
        keys: Select<users::Entity>,
    ) -> Result<Vec<(Millis, String)>, Error> {
        let page = keys.build(DbBackend::Sqlite);
        let one_row = Statement {
            sql: format!(
                "SELECT json_group_array(json_array(updated_at, id)) FROM ({})",
                page.sql
            ),
            ..page
        };
        let row = self
            .reads
            .query_one_raw(one_row)
            .await?
            .ok_or_else(|| Error::Corrupt("an aggregate returned no row".into()))?;
        let json: String = row.try_get_by_index(0)?;
        let mut keys: Vec<(Millis, String)> = serde_json::from_str(&json)
            .map_err(|error| Error::Corrupt(format!("a page's keys: {error}")))?;
        // An aggregate's input order is the subquery's in practice, but SQL
        // does not promise it: the page's order is restored here.
        keys.sort_unstable();
        Ok(keys)
    }
}

/// `users` by id.
fn by_id(users: Vec<Arc<StoredUser>>) -> HashMap<UserId, Arc<StoredUser>> {
    (users.into_iter())
        .map(|user| (user.id.clone(), user))
        .collect()
}

/// The rows of one page of `query` and one more (telling whether more
/// follow), in (updated_at, id) order.
fn page_select(query: &ListQuery) -> Select<users::Entity> {
    let mut select = users::Entity::find().filter(users::Column::DeletedAt.is_null());
    if let Some(banned) = query.banned {
        select = select.filter(users::Column::Banned.eq(banned));
    }
    // One lower bound, the tighter of the two, so that both planners
    // start the index range at it: a page costs its own rows however
    // deep into the directory it is. The row value is what they turn
    // into a range; `updated_at > x OR (updated_at = x AND id > y)` had
    // each page walk the index from the start (a full pass grew with the
    // square of the directory).
    let after = (query.after.as_ref())
        .filter(|(updated_at, _)| (query.changed_since).is_none_or(|since| *updated_at >= since));
    select = match (after, query.changed_since) {
        (Some((updated_at, id)), _) => select.filter(
            Expr::tuple([
                Expr::col(users::Column::UpdatedAt),
                Expr::col(users::Column::Id),
            ])
            .gt(Expr::tuple([(*updated_at).into(), id.as_str().into()])),
        ),
        (None, Some(since)) => select.filter(users::Column::UpdatedAt.gte(since)),
        (None, None) => select,
    };
    select
        .order_by_asc(users::Column::UpdatedAt)
        .order_by_asc(users::Column::Id)
        .limit(u64::from(query.page_size) + 1)
}
