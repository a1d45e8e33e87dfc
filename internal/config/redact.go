package config

import "regexp"

var pinValue = regexp.MustCompile(`(pin-value=)[^;&?]*`)

// redactPinValue masks a pin-value attribute of a PKCS#11 URI.
func redactPinValue(uri string) string { return pinValue.ReplaceAllString(uri, "${1}REDACTED") }
