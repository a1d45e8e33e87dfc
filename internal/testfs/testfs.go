// Package testfs gives tests real filesystems to fail under the appliance's
// database: a tmpfs that fills up, and an ext4 filesystem that turns
// read-only under open files (what errors=remount-ro does after an I/O
// error). Mounting needs root: RequireRoot skips the test otherwise. Only
// tests import it.
package testfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test mounts a filesystem")
	}
}

// MountTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted
// when the test ends (after everything registered later, such as a store's
// Close or an appliance's stop, has run).
func MountTmpfs(t testing.TB, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// FillUp writes a file in dir until the filesystem answers ENOSPC, then
// gives leave bytes back, and returns its path: removing it gives the space
// back.
func FillUp(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 16, 1 << 12, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling %s: %v", dir, err)
				}
				break
			}
		}
	}
	if leave > 0 {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(fi.Size() - leave); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// Ext4 is an ext4 filesystem in a file, loop-mounted on Dir with
// errors=remount-ro: after an error it turns read-only under open files,
// as a production data disk does.
type Ext4 struct {
	t     testing.TB
	image string
	Dir   string // where it is mounted
}

// NewExt4 makes an ext4 filesystem of size bytes and mounts it, unmounted
// (lazily) when the test ends. It skips the test when a tool it needs
// (mkfs.ext4, e2fsck, mount, umount, findmnt) is missing.
func NewExt4(t testing.TB, size int64) *Ext4 {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "mount", "umount", "findmnt"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	base := t.TempDir()
	fs := &Ext4{t: t, image: filepath.Join(base, "ext4.img"), Dir: filepath.Join(base, "data")}
	if err := os.Mkdir(fs.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fs.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fs.image, size); err != nil {
		t.Fatal(err)
	}
	fs.run("mkfs.ext4", "-q", "-F", fs.image)
	fs.mount()
	t.Cleanup(func() {
		if exec.Command("findmnt", "-n", fs.Dir).Run() == nil {
			_ = exec.Command("umount", "-l", fs.Dir).Run()
		}
	})
	return fs
}

func (fs *Ext4) run(name string, args ...string) string {
	fs.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		fs.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (fs *Ext4) mount() {
	fs.t.Helper()
	fs.run("mount", "-t", "ext4", "-o", "loop,errors=remount-ro", fs.image, fs.Dir)
	if err := os.Chmod(fs.Dir, 0o700); err != nil {
		fs.t.Fatal(err)
	}
}

// Fail makes ext4 record an error (its sysfs trigger_fs_error, what an I/O
// error in its metadata does): with errors=remount-ro the journal aborts and
// the filesystem is read-only from then on, for files already open too,
// until it is unmounted, checked and mounted again. It skips the test when
// the kernel has no trigger_fs_error.
func (fs *Ext4) Fail() {
	fs.t.Helper()
	dev := filepath.Base(strings.TrimSpace(fs.run("findmnt", "-no", "SOURCE", fs.Dir)))
	trigger := filepath.Join("/sys/fs/ext4", dev, "trigger_fs_error")
	if _, err := os.Stat(trigger); err != nil {
		fs.t.Skipf("no %s: %v", trigger, err)
	}
	if err := os.WriteFile(trigger, []byte("appliance storage fault test\n"), 0o200); err != nil {
		fs.t.Fatal(err)
	}
	if opts := fs.run("findmnt", "-no", "OPTIONS", fs.Dir); !strings.HasPrefix(opts, "ro") && !strings.Contains(opts, "emergency_ro") {
		fs.t.Fatalf("filesystem still writable after the error: %s", opts)
	}
}

// Repair is the runbook once whatever had the files open has stopped:
// unmount, e2fsck, mount again. It returns e2fsck's output. e2fsck exits 1
// when it corrected something (the free counts an aborted journal leaves
// behind).
func (fs *Ext4) Repair() string {
	fs.t.Helper()
	fs.run("umount", fs.Dir)
	out, err := exec.Command("e2fsck", "-fy", fs.image).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		fs.t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	fs.mount()
	return string(out)
}

// Snapshot maps every regular file under dirs to its contents, leaving out
// the files whose base name skip reports (nil: none), for a test to compare
// what is on disk before and after an operation that must change nothing.
func Snapshot(t testing.TB, skip func(name string) bool, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || (skip != nil && skip(d.Name())) {
				return err
			}
			raw, err := os.ReadFile(p)
			out[p] = string(raw)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Unchanged reports, as test errors, every file created, changed or
// removed between two Snapshots.
func Unchanged(t testing.TB, before, after map[string]string) {
	t.Helper()
	for p, v := range after {
		if b, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		} else if b != v {
			t.Errorf("%s changed (%d bytes, was %d)", p, len(v), len(b))
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		}
	}
}
