//! The schema's migrations: one list for both databases (each version has a file per backend
//! under `migrations/<backend>/`), and the rule for which of them a database still needs. Each
//! backend runs them in one transaction of its own and records them in
//! `pushgate_schema_migrations`.

use super::StoreError;

/// One version of the schema.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The list, for the backend whose directory is `migrations/$backend`.
macro_rules! migrations {
    ($backend:literal) => {
        &[
            Migration {
                version: 1,
                name: "events",
                sql: include_str!(concat!("../../migrations/", $backend, "/0001_events.sql")),
            },
            Migration {
                version: 2,
                name: "mailboxes",
                sql: include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0002_mailboxes.sql"
                )),
            },
            Migration {
                version: 3,
                name: "reservations",
                sql: include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0003_reservations.sql"
                )),
            },
        ]
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite");
pub const POSTGRES: &[Migration] = migrations!("postgres");

/// The migrations of `all` that a database whose newest recorded version is `newest` still
/// needs, in order. A database migrated by a newer pushgate is refused: this one does not know
/// what the newer schema means.
pub fn pending(
    all: &'static [Migration],
    newest: Option<i64>,
) -> Result<&'static [Migration], StoreError> {
    let known = all.last().map(|m| m.version).unwrap_or(0);
    match newest {
        Some(newest) if newest > known => Err(StoreError::Migration {
            version: newest,
            name: "unknown",
            detail: format!("the database was migrated by a newer pushgate (knows up to {known})"),
        }),
        Some(newest) => Ok(&all[all.partition_point(|m| m.version <= newest)..]),
        None => Ok(all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[Migration]) -> Vec<i64> {
        list.iter().map(|m| m.version).collect()
    }

    #[test]
    fn a_database_gets_the_versions_it_lacks_in_order() {
        for all in [SQLITE, POSTGRES] {
            assert_eq!(versions(pending(all, None).unwrap_or_default()), [1, 2, 3]);
            assert_eq!(versions(pending(all, Some(1)).unwrap_or_default()), [2, 3]);
            assert_eq!(
                versions(pending(all, Some(3)).unwrap_or_default()),
                [] as [i64; 0]
            );
        }
    }

    #[test]
    fn a_database_from_a_newer_pushgate_is_refused() {
        match pending(POSTGRES, Some(4)) {
            Err(StoreError::Migration {
                version, detail, ..
            }) => {
                assert_eq!(version, 4);
                assert!(detail.contains("newer pushgate"), "{detail}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn both_backends_list_every_migration_file_once_in_order() {
        for (backend, all) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            assert!(
                all.windows(2).all(|w| w[0].version + 1 == w[1].version),
                "{backend}: versions must count up by one"
            );
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let files = std::fs::read_dir(&dir)
                .map(|entries| entries.flatten().count())
                .unwrap_or(0);
            assert_eq!(
                files,
                all.len(),
                "{}: a migration file not listed",
                dir.display()
            );
        }
        let names = |all: &[Migration]| all.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }
}
