//! Finding profile and recipe files by name.
//!
//! A profile `NAME` is `PROFILES/NAME.kdl`; a recipe `NAME` is the one file
//! `NAME.kdl` anywhere under `RECIPES` (so related recipes can share a
//! directory, as `recipes/rumk/`). Only the files a build needs are read:
//! a broken recipe of another package does not stop this build.
//!
//! Every file is read only once [`Trust::check`] passes on it: as root, a
//! profile or recipe that another user owns or could have replaced (a
//! writable directory on its path) is refused, not read.

use std::fs;
use std::path::{Path, PathBuf};

use crate::diag::SourceFile;
use crate::error::{Result, SystemError};
use crate::profile::Profile;
use crate::recipe::{Recipe, check_recipe_name};
use crate::trust::Trust;

fn read(path: &Path, trust: Trust) -> Result<SourceFile> {
    trust.check(path)?;
    let text = fs::read_to_string(path).map_err(|e| SystemError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(SourceFile::new(path, text))
}

/// The names of the profiles in `dir`, sorted.
pub fn profile_names(dir: &Path) -> Result<Vec<String>> {
    let rd = fs::read_dir(dir).map_err(|e| SystemError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".kdl").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Reads and validates profile `name` from `dir`, if `trust` allows.
pub fn load_profile(dir: &Path, name: &str, trust: Trust) -> Result<Profile> {
    let available = || profile_names(dir).map(|n| n.join(", ")).unwrap_or_default();
    if check_recipe_name(name).is_err() {
        return Err(SystemError::NoProfile {
            name: name.into(),
            dir: dir.into(),
            available: available(),
        });
    }
    let path = dir.join(format!("{name}.kdl"));
    if !path.is_file() {
        return Err(SystemError::NoProfile {
            name: name.into(),
            dir: dir.into(),
            available: available(),
        });
    }
    Ok(Profile::parse(read(&path, trust)?)?)
}

/// Every `NAME.kdl` under `dir`, recursively.
fn find_all(dir: &Path, file_name: &str, found: &mut Vec<PathBuf>) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| SystemError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            find_all(&path, file_name, found)?;
        } else if e.file_name() == file_name {
            found.push(path);
        }
    }
    Ok(())
}

/// Reads and validates recipe `name` from under `dir`, if `trust` allows.
pub fn load_recipe(dir: &Path, name: &str, trust: Trust) -> Result<Recipe> {
    check_recipe_name(name).map_err(SystemError::Recipe)?;
    let mut found = Vec::new();
    find_all(dir, &format!("{name}.kdl"), &mut found)?;
    match found.as_slice() {
        [one] => Ok(Recipe::parse(read(one, trust)?)?),
        [] => Err(SystemError::Recipe(format!(
            "no recipe `{name}`: no {name}.kdl under {}",
            dir.display()
        ))),
        several => Err(SystemError::Recipe(format!(
            "recipe `{name}` is ambiguous: {}",
            several
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}
