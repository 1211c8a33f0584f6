//! What each output class of a model is: its name, the colour viewers show it in, and the coded
//! concept (category and type, as DICOM Segmentation objects need) that says what it means to
//! another program. The manifest's `classes` array holds one per output channel; an entry may be
//! just the name (bundles written before the details existed) or an object with the details.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One output class of the model (`classes[i]` of the manifest). Written as the name alone
/// when it has no colour and no code, so a manifest reads back to the same JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Short name (`gm`, `liver`): non-empty, unique within the model.
    pub name: String,
    /// Display colour, sRGB 0-255; absent: viewers choose.
    pub color: Option<[u8; 3]>,
    /// What the class is, as coded concepts (DICOM SEG's segmented property category and type);
    /// absent: a DICOM SEG writer cannot describe the class and must refuse or be told.
    pub code: Option<ClassCode>,
}

/// The coded meaning of a class: DICOM's SegmentedPropertyCategoryCodeSequence and
/// SegmentedPropertyTypeCodeSequence (e.g. category SCT 91723000 "Anatomical Structure", type
/// SCT 389080008 "White Matter").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCode {
    /// What kind of thing it is (tissue, anatomical structure, substance, ...).
    pub category: CodedConcept,
    /// The thing itself.
    #[serde(rename = "type")]
    pub kind: CodedConcept,
}

/// A code from a coding scheme, as DICOM writes one (CodingSchemeDesignator, CodeValue,
/// CodeMeaning): e.g. `SCT` (SNOMED CT), `389081007`, `Gray Matter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodedConcept {
    /// Coding scheme designator (`SCT`, `DCM`, ...): 1 to 16 characters.
    pub scheme: String,
    /// Code value in that scheme: 1 to 64 characters.
    pub value: String,
    /// Human-readable meaning: 1 to 64 characters.
    pub meaning: String,
}

impl ClassInfo {
    /// A class known by name only.
    pub fn named(name: impl Into<String>) -> ClassInfo {
        ClassInfo { name: name.into(), color: None, code: None }
    }

    /// What is wrong with this class's fields, each as `"<path>.<field>: why"` under `path`.
    pub(super) fn problems(&self, path: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push(format!("{path}.name: must not be empty"));
        }
        if self.name.chars().any(char::is_control) {
            p.push(format!("{path}.name: must not contain control characters, got {:?}", self.name));
        }
        if let Some(code) = &self.code {
            p.extend(code.category.problems(&format!("{path}.code.category")));
            p.extend(code.kind.problems(&format!("{path}.code.type")));
        }
        p
    }
}

impl CodedConcept {
    fn problems(&self, path: &str) -> Vec<String> {
        // The lengths of DICOM's SH (scheme) and LO (value, meaning) value representations.
        [("scheme", &self.scheme, 16), ("value", &self.value, 64), ("meaning", &self.meaning, 64)]
            .into_iter()
            .filter(|(_, text, max)| {
                text.trim().is_empty() || text.chars().count() > *max || text.chars().any(char::is_control)
            })
            .map(|(field, text, max)| {
                format!("{path}.{field}: must be 1 to {max} characters, none a control character, got {text:?}")
            })
            .collect()
    }
}

impl Serialize for ClassInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.color.is_none() && self.code.is_none() {
            return s.serialize_str(&self.name);
        }
        let mut object = s.serialize_struct("ClassInfo", 3)?;
        object.serialize_field("name", &self.name)?;
        match &self.color {
            Some(color) => object.serialize_field("color", color)?,
            None => object.skip_field("color")?,
        }
        match &self.code {
            Some(code) => object.serialize_field("code", code)?,
            None => object.skip_field("code")?,
        }
        object.end()
    }
}

/// A name alone (`"gm"`) or the object (`{"name": "gm", "color": [...], "code": {...}}`).
impl<'de> Deserialize<'de> for ClassInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClassInfo, D::Error> {
        #[derive(Deserialize)]
        struct Full {
            name: String,
            #[serde(default)]
            color: Option<[u8; 3]>,
            #[serde(default)]
            code: Option<ClassCode>,
        }
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(name) => Ok(ClassInfo::named(name)),
            v @ serde_json::Value::Object(_) => {
                let f: Full = serde_json::from_value(v).map_err(D::Error::custom)?;
                Ok(ClassInfo { name: f.name, color: f.color, code: f.code })
            }
            _ => Err(D::Error::custom("must be a class name or an object {\"name\", \"color\", \"code\"}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_or_an_object_reads_and_writes_back() {
        let named: ClassInfo = serde_json::from_str("\"gm\"").unwrap();
        assert_eq!(named, ClassInfo::named("gm"));
        assert_eq!(serde_json::to_string(&named).unwrap(), "\"gm\"");
        let text = r#"{"name":"wm","color":[245,245,245],"code":{"category":{"scheme":"SCT","value":"91723000","meaning":"Anatomical Structure"},"type":{"scheme":"SCT","value":"389080008","meaning":"White Matter"}}}"#;
        let full: ClassInfo = serde_json::from_str(text).unwrap();
        assert_eq!(full.color, Some([245, 245, 245]));
        assert_eq!(full.code.as_ref().unwrap().kind.meaning, "White Matter");
        assert_eq!(serde_json::to_string(&full).unwrap(), text);
        assert!(full.problems("classes.3").is_empty());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |t: &str| serde_json::from_str::<ClassInfo>(t).unwrap_err().to_string();
        assert!(err("3").contains("class name or an object"));
        assert!(err(r#"{"colour":[1,2,3]}"#).contains("missing field `name`"));
        assert!(err(r#"{"name":"a","color":[1,2,300]}"#).contains("300"));
        let mut c: ClassInfo = serde_json::from_str(r#"{"name":" ","code":{"category":{"scheme":"","value":"1","meaning":"m"},"type":{"scheme":"SCT","value":"1","meaning":"m"}}}"#).unwrap();
        assert_eq!(c.problems("classes.1").len(), 2, "{:?}", c.problems("classes.1"));
        c.name = "ok".into();
        assert!(c.problems("classes.1")[0].starts_with("classes.1.code.category.scheme:"));
    }
}
