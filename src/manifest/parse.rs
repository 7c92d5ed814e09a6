//! Reading one manifest file into the schema, with every syntax or type error located.

use serde::de::DeserializeOwned;

use super::error::ManifestError;
use super::path::{FieldPath, Seg};
use super::source::Source;

/// Where deserialisation stopped: the field path, the message, and the parser's own position.
type Failure = (FieldPath, String, Option<(usize, usize)>);

/// Deserialises `source` as `T`, reporting the field path and position of the first error.
pub fn parse<T: DeserializeOwned>(source: &Source) -> Result<T, ManifestError> {
    let mut failed_at: Option<Failure> = None;
    let result = serde_saphyr::with_deserializer_from_str(&source.text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            let path = FieldPath::from_serde(e.path());
            let message = e.inner().to_string();
            let at = e
                .inner()
                .location()
                .map(|l| (l.line() as usize, l.column() as usize));
            failed_at = Some((path, message.clone(), at));
            <serde_saphyr::Error as serde::de::Error>::custom(message)
        })
    });
    match result {
        Ok(value) => Ok(value),
        Err(err) => Err(match failed_at {
            Some((path, message, at)) => located(source, path, &message, at),
            None => syntax_error(source, &err),
        }),
    }
}

/// Turns a serde error at `path` into a located error. Unknown fields point at the key itself.
/// Errors the parser located itself (bad quoting, wrong scalar types) keep the parser's position.
fn located(
    source: &Source,
    path: FieldPath,
    message: &str,
    at: Option<(usize, usize)>,
) -> ManifestError {
    let message = strip_location(message);
    if let Some(field) = backticked(&message, "unknown field `") {
        // serde_path_to_error stops at the mapping; the key is the offending thing.
        let key_path = match path.0.last() {
            Some(Seg::Key(k)) if k == &field => path.clone(),
            _ => path.key(&field),
        };
        return ManifestError::key(source, &key_path, message);
    }
    if let Some(field) = backticked(&message, "missing field `") {
        return ManifestError::value(
            source,
            &path,
            format!("required field `{field}` is missing"),
        );
    }
    match at {
        Some((line, column)) if line > 0 => {
            ManifestError::at(source, source.pos_at(line, column), &path, message)
        }
        _ => ManifestError::value(source, &path, message),
    }
}

fn syntax_error(source: &Source, err: &serde_saphyr::Error) -> ManifestError {
    let message = strip_location(&err.to_string());
    let pos = match err.location() {
        Some(loc) => source.pos_at(loc.line() as usize, loc.column() as usize),
        None => source.pos_at(1, 1),
    };
    ManifestError::at(
        source,
        pos,
        &FieldPath::root(),
        format!("invalid YAML: {message}"),
    )
}

/// serde-saphyr appends its own " at line X column Y" to messages; ours carry positions already.
fn strip_location(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}
