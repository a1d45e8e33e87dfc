package screening

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
)

const (
	// maxListBytes bounds a list file so a wrong path (a disk image, a
	// log) cannot exhaust memory; the OFAC lists are a few kilobytes.
	maxListBytes = 64 << 20
	// maxLoggedRejects bounds per-line warnings per load; the total is
	// always logged and shown as Version.Rejected.
	maxLoggedRejects = 20
)

// fileStat is what Watch compares to notice a change cheaply before the
// content hash decides whether it is a new version.
type fileStat struct {
	missing bool
	modTime int64 // UnixNano
	size    int64
}

func statFile(path string) fileStat {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStat{missing: true}
	}
	return fileStat{modTime: fi.ModTime().UnixNano(), size: fi.Size()}
}

// Reload re-reads every list file and swaps the new set in at once. A file
// that cannot be read keeps its previous contents in force, with Error set
// in its Version; the returned error joins every such failure (each
// wrapping ErrList). A file whose content is unchanged keeps its Version,
// so versions recorded with hits stay meaningful across reloads.
func (s *Screener) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	old := s.snap.Load()
	lists := make([]*list, len(s.sources))
	var errs []error
	for i, src := range s.sources {
		l, err := s.load(src, old.lists[i])
		if err != nil {
			kept := *old.lists[i]
			kept.version.Error = err.Error()
			kept.seen = l.seen
			lists[i] = &kept
			errs = append(errs, err)
			s.log.Error("known-risk list reload failed; previous version stays in force",
				zap.String("list", src.Name), zap.String("path", src.Path),
				zap.String("sha256", kept.version.SHA256), zap.Error(err))
			continue
		}
		lists[i] = l
	}
	s.snap.Store(newSnapshot(lists))
	if s.onChange != nil {
		for i, l := range lists {
			if old.lists[i] == nil || l.version.SHA256 != old.lists[i].version.SHA256 || l.version.Error != "" {
				s.onChange(l.version)
			}
		}
	}
	return errors.Join(errs...)
}

// load reads and parses one file. prev, when its hash matches, is reused
// rather than re-parsed. On error the returned list carries only the stat
// observed, so Watch does not retry an unchanged broken file every tick.
func (s *Screener) load(src ListSource, prev *list) (*list, error) {
	// Stat before reading: if the file changes in between, the next Watch
	// tick sees a newer stat than recorded and loads again.
	seen := statFile(src.Path)
	data, err := readList(src.Path)
	if err != nil {
		return &list{seen: seen}, fmt.Errorf("%w: list %q: %w", ErrList, src.Name, err)
	}
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])
	if prev != nil && prev.version.SHA256 == hash {
		same := *prev
		same.version.Error = ""
		same.seen = seen
		return &same, nil
	}
	entries, rejected := parseList(data, s.norm[src.Chain], s.log.With(
		zap.String("list", src.Name), zap.String("path", src.Path)))
	l := &list{
		version: Version{
			Name:     src.Name,
			Chain:    src.Chain,
			Path:     src.Path,
			SHA256:   hash,
			Count:    len(entries),
			Rejected: rejected,
			LoadedAt: time.Now().UTC(),
		},
		entries: entries,
		seen:    seen,
	}
	s.log.Info("known-risk list loaded",
		zap.String("list", src.Name), zap.String("chain", string(src.Chain)),
		zap.String("path", src.Path), zap.String("sha256", hash),
		zap.Int("count", l.version.Count), zap.Int("rejected", rejected))
	return l, nil
}

func readList(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxListBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxListBytes {
		return nil, fmt.Errorf("file exceeds %d bytes", maxListBytes)
	}
	return data, nil
}

// parseList turns file bytes into the set of normalised entries. Lines are
// trimmed; empty lines and lines starting with '#' are skipped; a line that
// does not normalise is logged with its number and counted, not fatal, so
// one bad entry in an operator's file does not disable the whole list.
func parseList(data []byte, norm Normalizer, log *zap.Logger) (map[string]struct{}, int) {
	// Editors on some systems prepend a UTF-8 byte-order mark; without this
	// the first address would be rejected.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	entries := make(map[string]struct{}, bytes.Count(data, []byte{'\n'})+1)
	rejected := 0
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, err := norm(string(line))
		if err != nil {
			rejected++
			if rejected <= maxLoggedRejects {
				log.Warn("known-risk list entry rejected",
					zap.Int("line", lineNo), zap.ByteString("entry", truncate(line, 100)), zap.Error(err))
			}
			continue
		}
		entries[key] = struct{}{}
	}
	if rejected > maxLoggedRejects {
		log.Warn("further known-risk list entries rejected",
			zap.Int("not_logged", rejected-maxLoggedRejects), zap.Int("rejected", rejected))
	}
	return entries, rejected
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
