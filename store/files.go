package store

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Files of the Batch API (/v1/files): a batch's input, output and error
// files. A file is written whole, in one transaction, or not at all; its
// content is kept in chunks of FileChunk bytes, and it expires with its
// retention.

// FileChunk is the size of a stored file's chunks.
const FileChunk = 1 << 20

// ErrFileNotFound: the tenant has no such file.
var ErrFileNotFound = errors.New("file not found")

// File is a stored file's metadata.
type File struct {
	ID        string
	Tenant    string
	Filename  string
	Purpose   string
	Bytes     int64
	CreatedAt time.Time
	ExpiresAt time.Time
}

// SaveFile stores a file and its content, kept until f.ExpiresAt.
func (s *Store) SaveFile(ctx context.Context, f File, content []byte) error {
	keep := time.Until(f.ExpiresAt)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, rkeys.File(f.Tenant, f.ID), "filename", f.Filename, "purpose", f.Purpose, "bytes", f.Bytes,
			"created_at", f.CreatedAt.UnixMilli(), "expires_at", f.ExpiresAt.UnixMilli())
		p.Expire(ctx, rkeys.File(f.Tenant, f.ID), keep)
		for off := 0; off < len(content); off += FileChunk {
			p.RPush(ctx, rkeys.FileData(f.Tenant, f.ID), content[off:min(off+FileChunk, len(content))])
		}
		p.Expire(ctx, rkeys.FileData(f.Tenant, f.ID), keep)
		p.ZAdd(ctx, rkeys.Files(f.Tenant), redis.Z{Score: float64(f.CreatedAt.UnixMilli()), Member: f.ID})
		// The index outlives its newest file; an expired file's entry is
		// dropped when it is listed.
		p.Expire(ctx, rkeys.Files(f.Tenant), keep)
		return nil
	})
	if err != nil {
		return unavailable("save file", err)
	}
	return nil
}

// GetFile reads a tenant's file's metadata.
func (s *Store) GetFile(ctx context.Context, tenant, id string) (File, error) {
	m, err := s.rdb.HGetAll(ctx, rkeys.File(tenant, id)).Result()
	if err != nil {
		return File{}, unavailable("read file", err)
	}
	if len(m) == 0 {
		return File{}, ErrFileNotFound
	}
	n, _ := strconv.ParseInt(m["bytes"], 10, 64)
	return File{ID: id, Tenant: tenant, Filename: m["filename"], Purpose: m["purpose"], Bytes: n,
		CreatedAt: parseMillis(m["created_at"]), ExpiresAt: parseMillis(m["expires_at"])}, nil
}

// FileContent reads a tenant's file's content.
func (s *Store) FileContent(ctx context.Context, tenant, id string) ([]byte, error) {
	chunks, err := s.rdb.LRange(ctx, rkeys.FileData(tenant, id), 0, -1).Result()
	if err != nil {
		return nil, unavailable("read file", err)
	}
	if len(chunks) == 0 {
		if _, err := s.GetFile(ctx, tenant, id); err != nil {
			return nil, err
		}
	}
	var n int
	for _, c := range chunks {
		n += len(c)
	}
	out := make([]byte, 0, n)
	for _, c := range chunks {
		out = append(out, c...)
	}
	return out, nil
}

// ListFiles lists a tenant's files, newest first: up to limit of them
// created before the file `after` (all when after is empty), and whether
// more follow.
func (s *Store) ListFiles(ctx context.Context, tenant, after string, limit int) ([]File, bool, error) {
	ids, more, err := s.page(ctx, rkeys.Files(tenant), after, limit)
	if err != nil {
		return nil, false, err
	}
	out := make([]File, 0, len(ids))
	for _, id := range ids {
		f, err := s.GetFile(ctx, tenant, id)
		if errors.Is(err, ErrFileNotFound) {
			s.rdb.ZRem(ctx, rkeys.Files(tenant), id) // expired
			continue
		}
		if err != nil {
			return nil, false, err
		}
		out = append(out, f)
	}
	return out, more, nil
}

// page reads up to limit members of an index of ids by creation, newest
// first, from the one after `after`; more says whether others follow.
func (s *Store) page(ctx context.Context, index, after string, limit int) ([]string, bool, error) {
	start := int64(0)
	if after != "" {
		rank, err := s.rdb.ZRevRank(ctx, index, after).Result()
		if errors.Is(err, redis.Nil) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, unavailable("list", err)
		}
		start = rank + 1
	}
	ids, err := s.rdb.ZRevRange(ctx, index, start, start+int64(limit)).Result()
	if err != nil {
		return nil, false, unavailable("list", err)
	}
	more := len(ids) > limit
	if more {
		ids = ids[:limit]
	}
	return ids, more, nil
}

// DeleteFile removes a tenant's file; ErrFileNotFound when it has none.
func (s *Store) DeleteFile(ctx context.Context, tenant, id string) error {
	var del *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, rkeys.File(tenant, id))
		p.Del(ctx, rkeys.FileData(tenant, id))
		p.ZRem(ctx, rkeys.Files(tenant), id)
		return nil
	})
	if err != nil {
		return unavailable("delete file", err)
	}
	if del.Val() == 0 {
		return ErrFileNotFound
	}
	return nil
}
