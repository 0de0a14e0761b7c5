package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"strings"
)

// maxConfigFileSize caps what `realmnet run --config` reads: a config file
// is a few hundred bytes; anything near the cap is the wrong file (a log,
// a binary), refused before it is read into memory whole.
const maxConfigFileSize = 1 << 20

// runConfig is the JSON config file of `realmnet run`. Each key is the name
// of a run flag with "_" for "-"; a key left out (or null) leaves the flag's
// value. TestRunConfigKeysMatchFlags keeps the two in step.
type runConfig struct {
	// Listen is --listen: QUIC multiaddrs to listen on.
	Listen []string `json:"listen"`
	// Identity is --identity: the private key's file.
	Identity *string `json:"identity"`
	// Bootstrap is --bootstrap: multiaddrs ending in /p2p/<peer ID>.
	Bootstrap []string `json:"bootstrap"`
	// DHTMode is --dht-mode: auto, server or client.
	DHTMode *string `json:"dht_mode"`
	// DHTPrivateAddrs is --dht-private-addrs.
	DHTPrivateAddrs *bool `json:"dht_private_addrs"`
	// BootstrapTimeout is --bootstrap-timeout, a Go duration ("10s").
	BootstrapTimeout *string `json:"bootstrap_timeout"`
	// DebugAddr is --debug-addr: the debug endpoint's host:port.
	DebugAddr *string `json:"debug_addr"`
	// DebugTokenFile is --debug-token-file: the file holding its token.
	DebugTokenFile *string `json:"debug_token_file"`
	// LogLevel is --log-level.
	LogLevel *string `json:"log_level"`
	// DataDir is --data-dir: where the node keeps its state.
	DataDir *string `json:"data_dir"`
	// RelayService is --relay-service.
	RelayService *bool `json:"relay_service"`
	// Relay is --relay: static relays, multiaddrs ending in /p2p/<peer ID>.
	Relay []string `json:"relay"`
	// Reachability is --reachability: "", public or private.
	Reachability *string `json:"reachability"`
	// Realm is --realm: realms to join.
	Realm []string `json:"realm"`
	// PSKFile is --psk-file: one key file per realm, in order.
	PSKFile []string `json:"psk_file"`
	// RealmRelay is --realm-relay.
	RealmRelay *bool `json:"realm_relay"`
}

// configKey returns the config key of the run flag named flag.
func configKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// configKeys returns runConfig's keys in the order of its fields.
func configKeys() []string {
	fields := reflect.TypeFor[runConfig]()
	keys := make([]string, 0, fields.NumField())
	for field := range fields.Fields() {
		keys = append(keys, strings.Split(field.Tag.Get("json"), ",")[0])
	}
	return keys
}

// configKeyType describes what the value of key must be, for errors.
func configKeyType(key string) string {
	for field := range reflect.TypeFor[runConfig]().Fields() {
		if strings.Split(field.Tag.Get("json"), ",")[0] != key {
			continue
		}
		switch field.Type {
		case reflect.TypeFor[[]string]():
			return "an array of strings"
		case reflect.TypeFor[*bool]():
			return "true or false"
		default:
			return "a string"
		}
	}
	return "nothing (unknown key)"
}

// loadRunConfig reads the config file at path. Errors name the file and,
// for a bad value, the key: the file is missing, unreadable, larger than
// maxConfigFileSize, not one JSON object, or holds an unknown key or a
// value of the wrong JSON type. Values themselves are checked by
// runSettings.nodeOptions.
func loadRunConfig(path string) (runConfig, error) {
	file, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return runConfig{}, fmt.Errorf("--config %s: no such file", path)
		}
		return runConfig{}, fmt.Errorf("--config %s: %w", path, unwrapPathError(err))
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxConfigFileSize+1))
	if err != nil {
		return runConfig{}, fmt.Errorf("--config %s: %w", path, unwrapPathError(err))
	}
	if len(data) > maxConfigFileSize {
		return runConfig{}, fmt.Errorf("--config %s: larger than %d bytes (1 MiB); not a realmnet config file",
			path, maxConfigFileSize)
	}
	return parseRunConfig(path, data)
}

// parseRunConfig decodes data, the content of the config file path.
func parseRunConfig(path string, data []byte) (runConfig, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return runConfig{}, fmt.Errorf("--config %s: empty; want a JSON object", path)
	}
	if trimmed[0] != '{' {
		return runConfig{}, fmt.Errorf("--config %s: not a JSON object (it starts with %q)", path, firstRune(trimmed))
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	var config runConfig
	if err := decoder.Decode(&config); err != nil {
		return runConfig{}, describeJSONError(path, data, err)
	}
	if _, err := decoder.Token(); !errors.Is(err, io.EOF) {
		return runConfig{}, fmt.Errorf("--config %s: more after the JSON object (at byte %d); want one object",
			path, decoder.InputOffset())
	}
	return config, nil
}

// describeJSONError turns an error of decoding the config file path, whose
// content is data, into one that names the file and the line, or the key.
func describeJSONError(path string, data []byte, err error) error {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		line, column := lineColumn(data, syntaxErr.Offset)
		return fmt.Errorf("--config %s: not valid JSON: line %d, column %d: %w", path, line, column, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("--config %s: not valid JSON: it ends inside the object", path)
	case errors.As(err, &typeErr) && typeErr.Field != "":
		key, _, _ := strings.Cut(typeErr.Field, ".")
		return fmt.Errorf("%q in %s: want %s, not a JSON %s", key, path, configKeyType(key), typeErr.Value)
	}
	// encoding/json reports an unknown key only in its message.
	if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("--config %s: unknown key %s (known keys: %s)", path, key, strings.Join(configKeys(), ", "))
	}
	return fmt.Errorf("--config %s: %w", path, err)
}

// lineColumn returns the 1-based line and column of the byte at offset in
// data.
func lineColumn(data []byte, offset int64) (line, column int) {
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	column = len(before) - bytes.LastIndexByte(before, '\n')
	return line, column
}

// firstRune returns the first UTF-8 character of data, for errors.
func firstRune(data []byte) string {
	for _, r := range string(data) {
		return string(r)
	}
	return ""
}

// unwrapPathError drops an *fs.PathError's operation and path, which the
// caller's message already names.
func unwrapPathError(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err
	}
	return err
}
