package api

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
)

// The Batch API's files (/v1/files), in OpenAI's shapes: a batch's input is
// uploaded here, its output and error files are read from here. A tenant
// sees only its own files; any other id is 404.

// registerFiles adds /v1/files.
func (s *Server) registerFiles(e *echo.Echo) {
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.gate.middleware, s.rate.middleware}
	e.POST("/v1/files", s.uploadFile, append(mw, s.bytes.limit(s.opt.FilesMaxBytes+multipartSlack))...)
	e.GET("/v1/files", s.listFiles, mw...)
	e.GET("/v1/files/:id", s.getFile, mw...)
	e.GET("/v1/files/:id/content", s.fileContent, mw...)
	e.DELETE("/v1/files/:id", s.deleteFile, mw...)
}

// multipartSlack is what an upload's form may hold beside the file.
const multipartSlack = 64 << 10

// newObjectID names a file or batch: prefix and 24 random characters.
func newObjectID(prefix string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return prefix + string(b)
}

func fileObject(f store.File) map[string]any {
	return map[string]any{"id": f.ID, "object": "file", "bytes": f.Bytes, "created_at": f.CreatedAt.Unix(),
		"expires_at": f.ExpiresAt.Unix(), "filename": f.Filename, "purpose": f.Purpose, "status": "processed", "status_details": nil}
}

// uploadFile stores a multipart upload (purpose=batch, file): whole, or
// nothing when it is over a limit.
func (s *Server) uploadFile(c echo.Context) error {
	req := c.Request()
	req.Body = http.MaxBytesReader(c.Response(), req.Body, s.opt.FilesMaxBytes+multipartSlack)
	mr, err := req.MultipartReader()
	if err != nil {
		return oaInvalid("file", "the upload must be multipart/form-data with the fields purpose and file: "+err.Error())
	}
	var purpose, filename string
	var content []byte
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return s.uploadError(err)
		}
		switch part.FormName() {
		case "purpose":
			v, err := io.ReadAll(io.LimitReader(part, 64))
			if err != nil {
				return s.uploadError(err)
			}
			purpose = strings.TrimSpace(string(v))
		case "file":
			filename = part.FileName()
			if content, err = io.ReadAll(io.LimitReader(part, s.opt.FilesMaxBytes+1)); err != nil {
				return s.uploadError(err)
			}
			if int64(len(content)) > s.opt.FilesMaxBytes {
				return s.fileTooLarge()
			}
		}
	}
	switch {
	case purpose != "batch":
		return oaInvalid("purpose", fmt.Sprintf("purpose %q is not supported by this server (supported: batch)", purpose))
	case content == nil:
		return oaInvalid("file", "the upload has no file part")
	case filename == "":
		filename = "upload.jsonl"
	}
	if n := bytes.Count(bytes.TrimRight(content, "\n"), []byte("\n")) + 1; n > s.opt.BatchMaxRequests {
		return errf(http.StatusBadRequest, "too_many_requests_in_file", "file",
			fmt.Sprintf("the file holds %d lines; a batch takes at most %d (CHATFLEET_BATCH_MAX_REQUESTS)", n, s.opt.BatchMaxRequests))
	}
	now := time.Now()
	f := store.File{ID: newObjectID("file-"), Tenant: tenantOf(c), Filename: filename, Purpose: purpose, Bytes: int64(len(content)),
		CreatedAt: now, ExpiresAt: now.Add(s.opt.FilesRetention)}
	if err := s.jobs.SaveFile(req.Context(), f, content); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, fileObject(f))
}

func (s *Server) uploadError(err error) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return s.fileTooLarge()
	}
	return oaInvalid("file", "the upload could not be read: "+err.Error())
}

func (s *Server) fileTooLarge() error {
	return errf(http.StatusRequestEntityTooLarge, "file_too_large", "file",
		fmt.Sprintf("a file may hold at most %d bytes (CHATFLEET_FILES_MAX_BYTES)", s.opt.FilesMaxBytes))
}

// fileOf reads the tenant's file named in the path; 404 for any other.
func (s *Server) fileOf(c echo.Context) (store.File, error) {
	f, err := s.store.GetFile(c.Request().Context(), tenantOf(c), c.Param("id"))
	if errors.Is(err, store.ErrFileNotFound) {
		return f, errf(http.StatusNotFound, "file_not_found", "id", fmt.Sprintf("no file %q", c.Param("id")))
	}
	return f, err
}

func (s *Server) getFile(c echo.Context) error {
	f, err := s.fileOf(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, fileObject(f))
}

func (s *Server) fileContent(c echo.Context) error {
	if _, err := s.fileOf(c); err != nil {
		return err
	}
	b, err := s.store.FileContent(c.Request().Context(), tenantOf(c), c.Param("id"))
	if errors.Is(err, store.ErrFileNotFound) {
		return errf(http.StatusNotFound, "file_not_found", "id", fmt.Sprintf("no file %q", c.Param("id")))
	}
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, "application/octet-stream", b)
}

func (s *Server) deleteFile(c echo.Context) error {
	err := s.jobs.DeleteFile(c.Request().Context(), tenantOf(c), c.Param("id"))
	if errors.Is(err, store.ErrFileNotFound) {
		return errf(http.StatusNotFound, "file_not_found", "id", fmt.Sprintf("no file %q", c.Param("id")))
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"id": c.Param("id"), "object": "file", "deleted": true})
}

// listLimit reads ?limit= (1 to max, default def).
func listLimit(c echo.Context, def, max int) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, oaInvalid("limit", fmt.Sprintf("limit must be a number from 1 to %d", max))
	}
	return n, nil
}

func (s *Server) listFiles(c echo.Context) error {
	limit, err := listLimit(c, 10000, 10000)
	if err != nil {
		return err
	}
	fs, more, err := s.store.ListFiles(c.Request().Context(), tenantOf(c), c.QueryParam("after"), limit)
	if err != nil {
		return err
	}
	data := make([]any, 0, len(fs))
	for _, f := range fs {
		if p := c.QueryParam("purpose"); p == "" || p == f.Purpose {
			data = append(data, fileObject(f))
		}
	}
	return c.JSON(http.StatusOK, listObject(data, more))
}

// listObject is OpenAI's cursor page.
func listObject(data []any, more bool) map[string]any {
	out := map[string]any{"object": "list", "data": data, "has_more": more, "first_id": nil, "last_id": nil}
	if len(data) > 0 {
		out["first_id"] = data[0].(map[string]any)["id"]
		out["last_id"] = data[len(data)-1].(map[string]any)["id"]
	}
	return out
}
