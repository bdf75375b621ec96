//! weather-tool: an MCP tool server compiled to a WASI preview-1 command.
//!
//! The host runs this program once per `tools/call`:
//!
//! * `argv[1]` (or the `MCPKIT_TOOL` environment variable) names the tool;
//! * stdin holds the call's arguments as one JSON object;
//! * stdout receives the result as JSON. `{"error": "..."}` reports a failure the
//!   caller should see (the exit code stays 0; a non-zero exit means the tool crashed).
//!
//! Tools:
//!
//! * `get_weather(location)` looks the location up in `/data/weather.json`, a file shipped
//!   in the bundle and granted read-only by `policy.storage` in config.yaml. It answers
//!   with structured JSON that matches the tool's `output_schema`.
//! * `convert_temperature(value, from, to)` converts between celsius, fahrenheit and
//!   kelvin and answers with MCP text content.

use std::io::{Read, Write};

use serde_json::{json, Map, Value};

/// Where the bundle's `data/` folder appears inside the sandbox.
const DATA_FILE: &str = "/data/weather.json";
/// Arguments larger than this are refused rather than parsed.
const MAX_INPUT: u64 = 1 << 20;
/// From here on an f64 has no fractional digits: shown in scientific notation, never rounded.
const LARGE: f64 = 9_007_199_254_740_992.0; // 2^53

type ToolResult = Result<Value, String>;

fn main() {
    let result = run();
    let out = match result {
        Ok(value) => value,
        Err(message) => json!({ "error": message }),
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing useful can be done if the host closed stdout.
    let _ = writeln!(stdout, "{out}");
    let _ = stdout.flush();
}

fn run() -> ToolResult {
    let tool = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MCPKIT_TOOL").ok())
        .ok_or_else(|| "no tool name: pass it as the first argument or in MCPKIT_TOOL".to_string())?;
    let args = read_arguments()?;
    match tool.as_str() {
        "get_weather" => get_weather(&args),
        "convert_temperature" => convert_temperature(&args),
        other => Err(format!(
            "unknown tool {other:?}; this server has get_weather and convert_temperature"
        )),
    }
}

/// The call's arguments: one JSON object on stdin (empty input means no arguments).
fn read_arguments() -> Result<Map<String, Value>, String> {
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the arguments from stdin: {e}"))?;
    if input.len() as u64 > MAX_INPUT {
        return Err(format!("arguments larger than {MAX_INPUT} bytes"));
    }
    if input.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(&input) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "arguments must be a JSON object, not {}",
            type_name(&other)
        )),
        Err(e) => Err(format!("arguments are not valid JSON: {e}")),
    }
}

// ------------------------------------------------------------------------ get_weather

fn get_weather(args: &Map<String, Value>) -> ToolResult {
    let location = string_arg(args, "location")?;
    let wanted = normalize(location);
    if wanted.is_empty() {
        return Err("location must not be empty".into());
    }

    let text = std::fs::read_to_string(DATA_FILE).map_err(|e| {
        format!("cannot read the weather data at {DATA_FILE}: {e} (is bundle:data granted at /data?)")
    })?;
    let data: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the weather data at {DATA_FILE} is not valid JSON: {e}"))?;
    let locations = data
        .get("locations")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("the weather data at {DATA_FILE} has no \"locations\" object"))?;

    // "London", " london ", "London, GB" all find the same entry.
    let city = wanted.split(',').next().unwrap_or("").trim().to_string();
    let entry = locations
        .get(&wanted)
        .or_else(|| locations.get(&city))
        .or_else(|| {
            locations.values().find(|v| {
                v.get("name").and_then(Value::as_str).map(normalize).as_deref() == Some(city.as_str())
            })
        });
    let Some(entry) = entry else {
        let mut known: Vec<&str> = locations
            .values()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect();
        known.sort_unstable();
        return Err(format!(
            "unknown location {location:?}; known locations: {}",
            known.join(", ")
        ));
    };

    let name = entry.get("name").and_then(Value::as_str).unwrap_or(location);
    let temperature_c = entry
        .get("temperature_c")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("the weather data for {name} has no temperature_c"))?;
    let temperature_f = c_to_f(temperature_c);
    if !temperature_f.is_finite() {
        return Err(format!(
            "the weather data for {name} has a temperature out of range: {}",
            format_number(temperature_c)
        ));
    }
    let conditions = entry.get("conditions").and_then(Value::as_str).unwrap_or("unknown");

    let mut out = Map::new();
    out.insert("location".into(), json!(name));
    if let Some(country) = entry.get("country").and_then(Value::as_str) {
        out.insert("country".into(), json!(country));
    }
    out.insert("temperature_c".into(), json!(round2(temperature_c)));
    out.insert("temperature_f".into(), json!(round2(temperature_f)));
    out.insert("conditions".into(), json!(conditions));
    for key in ["humidity_pct", "wind_kph"] {
        if let Some(v) = entry.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(updated) = data.get("updated").and_then(Value::as_str) {
        out.insert("observed_at".into(), json!(updated));
    }
    Ok(Value::Object(out))
}

// ------------------------------------------------------------------------ convert_temperature

#[derive(Clone, Copy)]
enum Unit {
    Celsius,
    Fahrenheit,
    Kelvin,
}

impl Unit {
    fn parse(text: &str) -> Option<Unit> {
        match normalize(text).as_str() {
            "celsius" | "c" | "°c" => Some(Unit::Celsius),
            "fahrenheit" | "f" | "°f" => Some(Unit::Fahrenheit),
            "kelvin" | "k" => Some(Unit::Kelvin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Celsius => "celsius",
            Unit::Fahrenheit => "fahrenheit",
            Unit::Kelvin => "kelvin",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Unit::Celsius => "°C",
            Unit::Fahrenheit => "°F",
            Unit::Kelvin => "K",
        }
    }

    fn to_celsius(self, value: f64) -> f64 {
        match self {
            Unit::Celsius => value,
            Unit::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
            Unit::Kelvin => value - 273.15,
        }
    }

    fn from_celsius(self, celsius: f64) -> f64 {
        match self {
            Unit::Celsius => celsius,
            Unit::Fahrenheit => c_to_f(celsius),
            Unit::Kelvin => celsius + 273.15,
        }
    }
}

fn convert_temperature(args: &Map<String, Value>) -> ToolResult {
    let value = match args.get("value") {
        Some(Value::Number(n)) => n.as_f64().filter(|v| v.is_finite()).ok_or("value is not a finite number")?,
        Some(other) => return Err(format!("value must be a number, not {}", type_name(other))),
        None => return Err("missing required argument \"value\"".into()),
    };
    let from = unit_arg(args, "from")?;
    let to = unit_arg(args, "to")?;

    let celsius = from.to_celsius(value);
    // Compare with a little slack so that 0 K written as -273.15 °C is accepted.
    if celsius < -273.15 - 1e-9 {
        return Err(format!(
            "{} {} is below absolute zero",
            format_number(value),
            from.symbol()
        ));
    }
    let result = to.from_celsius(celsius);
    // Near the largest f64 the arithmetic overflows: say so rather than answer "inf".
    if !celsius.is_finite() || !result.is_finite() {
        return Err(format!(
            "{} {} is too large to convert to {}: the result is beyond the range of a 64-bit float",
            format_number(value),
            from.symbol(),
            to.name()
        ));
    }
    let result = round2(result);
    let text = format!(
        "{} {} = {} {}",
        format_number(value),
        from.symbol(),
        format_number(result),
        to.symbol()
    );
    Ok(json!({ "content": [{ "type": "text", "text": text }] }))
}

fn unit_arg(args: &Map<String, Value>, key: &str) -> Result<Unit, String> {
    let text = string_arg(args, key)?;
    Unit::parse(text).ok_or_else(|| {
        format!(
            "unknown unit {text:?} for {key}; use {}, {} or {}",
            Unit::Celsius.name(),
            Unit::Fahrenheit.name(),
            Unit::Kelvin.name()
        )
    })
}

// ------------------------------------------------------------------------ helpers

fn string_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{key} must be a string, not {}", type_name(other))),
        None => Err(format!("missing required argument {key:?}")),
    }
}

fn normalize(text: &str) -> String {
    text.trim().to_lowercase()
}

fn c_to_f(celsius: f64) -> f64 {
    celsius * 9.0 / 5.0 + 32.0
}

/// Rounded to two decimals; a number too large to have any (beyond 2^53) is returned as it is,
/// so that the scaling by 100 cannot overflow.
fn round2(x: f64) -> f64 {
    if !x.is_finite() || x.abs() >= LARGE {
        return x;
    }
    let r = (x * 100.0).round() / 100.0;
    if r == 0.0 {
        0.0 // no "-0"
    } else {
        r
    }
}

/// 212 -> "212", 37.777 -> "37.78", 0.5 -> "0.5", 1e300 -> "1e300", 1.6200000000000032e16 -> "1.62e16".
fn format_number(x: f64) -> String {
    if x.abs() >= LARGE {
        // 15 significant digits, as many as an f64 holds reliably: 1.62e16, not 1.6200000000000032e16
        let text = format!("{x:.14e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        let short = format!("{mantissa}e{exponent}");
        // rounding up can pass the largest f64 (1.79769313486232e308 reads back as inf): then in full
        return match short.parse::<f64>() {
            Ok(back) if back.is_finite() => short,
            _ => format!("{x:e}"),
        };
    }
    let text = format!("{:.2}", round2(x));
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
