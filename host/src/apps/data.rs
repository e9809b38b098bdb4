//! Apps' key-value data as operators see it (`host kv APP …`, the admin
//! API's `/v1/apps/{name}/kv`): list, read, write and delete keys in a
//! store the app declares, and what each app holds. An operator reaches
//! exactly what the app itself could: its own namespace, the stores its
//! versions declare, within the same limits.

use crate::apps::error::AppError;
use crate::apps::registry::Registry;
use crate::kv::{Bucket, KeyPage, Usage};

impl Registry {
    /// The bucket of `store` of app `name`, if the app exists and one of
    /// its versions declares the store.
    async fn bucket(&self, name: &str, store: &str) -> Result<Bucket, AppError> {
        let view = self.get(name).await?;
        let mut declared: Vec<&str> = view
            .versions
            .iter()
            .flat_map(|v| v.record.settings.key_value.iter().map(String::as_str))
            .collect();
        declared.sort_unstable();
        declared.dedup();
        if !declared.contains(&store) {
            let has = if declared.is_empty() {
                "declares no stores (deploy it with --kv STORE)".to_string()
            } else {
                format!("declares {}", declared.join(", "))
            };
            return Err(AppError::NotFound(format!(
                "app {name} has no key-value store {store:?}: it {has}"
            )));
        }
        Ok(Bucket::new(name, store))
    }

    /// Up to a page of keys of `store` of app `name` that start with
    /// `prefix`, after `cursor`.
    pub async fn kv_list(
        &self,
        name: &str,
        store: &str,
        prefix: String,
        cursor: Option<String>,
    ) -> Result<KeyPage, AppError> {
        let bucket = self.bucket(name, store).await?;
        Ok(self
            .kv()
            .list_keys("admin_list", None, bucket, prefix, cursor)
            .await?)
    }

    pub async fn kv_get(&self, name: &str, store: &str, key: String) -> Result<Vec<u8>, AppError> {
        let bucket = self.bucket(name, store).await?;
        let shown = key.clone();
        self.kv()
            .get("admin_get", None, bucket, key)
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!(
                    "app {name} has no key {shown:?} in store {store:?}"
                ))
            })
    }

    pub async fn kv_set(
        &self,
        name: &str,
        store: &str,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), AppError> {
        let bucket = self.bucket(name, store).await?;
        self.kv().set("admin_set", None, bucket, key, value).await?;
        Ok(())
    }

    pub async fn kv_delete(&self, name: &str, store: &str, key: String) -> Result<(), AppError> {
        let bucket = self.bucket(name, store).await?;
        self.kv().delete("admin_delete", None, bucket, key).await?;
        Ok(())
    }

    /// What app `name` holds, all its stores together.
    pub async fn kv_usage(&self, name: &str) -> Result<Usage, AppError> {
        self.get(name).await?;
        Ok(self.kv().usage(name).await?)
    }

    /// Refresh the `kv_keys`/`kv_bytes` gauges of every app that declares
    /// a store (for a scrape); a store that is down leaves them as they
    /// were.
    pub async fn kv_refresh_usage(&self) {
        for app in self.list().await {
            let declares = app
                .versions
                .iter()
                .any(|v| !v.record.settings.key_value.is_empty());
            if declares && let Err(err) = self.kv().usage(&app.name).await {
                tracing::debug!(app = %app.name, error = %err, "key-value usage not read");
            }
        }
    }
}
