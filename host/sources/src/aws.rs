//! The AWS shared configuration and credentials files, read as the AWS CLI reads them, for what
//! the `AWS_*` environment variables leave unset.

use std::collections::HashMap;
use std::path::PathBuf;

/// The settings of the AWS profile (`$AWS_PROFILE`, else `default`) from the shared credentials
/// file (`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and config file
/// (`$AWS_CONFIG_FILE`, else `~/.aws/config`: `[default]` or `[profile NAME]`), for each key whose
/// environment variable is unset (the environment wins, as with the AWS CLI).
pub(crate) fn profile_settings() -> Vec<(&'static str, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let profile =
        var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE")).unwrap_or_else(|| "default".into());
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    let read = |variable: &str, default: &str| {
        let path = var(variable).map(PathBuf::from).unwrap_or_else(|| home.join(default));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let credentials = ini_section(&read("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"), &profile);
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let config = ini_section(&read("AWS_CONFIG_FILE", ".aws/config"), &config_section);
    let keys: [(&'static str, &[&str]); 5] = [
        ("aws_access_key_id", &["AWS_ACCESS_KEY_ID"]),
        ("aws_secret_access_key", &["AWS_SECRET_ACCESS_KEY"]),
        ("aws_session_token", &["AWS_SESSION_TOKEN"]),
        ("region", &["AWS_REGION", "AWS_DEFAULT_REGION"]),
        ("endpoint_url", &["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
    ];
    keys.into_iter()
        .filter(|(_, variables)| variables.iter().all(|v| var(v).is_none()))
        .filter_map(|(key, _)| {
            let value = credentials.get(key).or_else(|| config.get(key))?;
            Some((key, value.clone()))
        })
        .collect()
}

/// The top-level `key = value` pairs of `[section]` in an INI file (the AWS files' format;
/// indented lines belong to a nested service block and are skipped).
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut current = None::<&str>;
    let mut pairs = HashMap::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = Some(name.trim());
        } else if current == Some(section)
            && !line.starts_with([' ', '\t'])
            && let Some((key, value)) = trimmed.split_once('=')
        {
            pairs.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::ini_section;

    #[test]
    fn aws_files_are_read_by_section_and_top_level_key() {
        let config = "[default]\nregion = eu-west-1\n\n[profile edge]\nregion = us-east-1\nendpoint_url = http://10.0.0.5:9000\ns3 =\n  addressing_style = path\n# a comment\n";
        let edge = ini_section(config, "profile edge");
        assert_eq!(edge.get("region").map(String::as_str), Some("us-east-1"));
        assert_eq!(edge.get("endpoint_url").map(String::as_str), Some("http://10.0.0.5:9000"));
        assert!(!edge.contains_key("addressing_style"), "nested service settings are not top-level keys");
        assert_eq!(ini_section(config, "default").get("region").map(String::as_str), Some("eu-west-1"));
        assert!(ini_section(config, "profile other").is_empty());
    }
}
