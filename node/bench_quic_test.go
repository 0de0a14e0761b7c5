package node_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// benchQUICConfig is go-libp2p v0.52.0's quicreuse configuration
// (p2p/transport/quicreuse/config.go), which realmnet's QUIC transport
// uses: the raw quic-go reference gets the same flow-control windows.
func benchQUICConfig() *quic.Config {
	return &quic.Config{
		MaxIncomingStreams:               256,
		MaxIncomingUniStreams:            5,
		MaxStreamReceiveWindow:           10 << 20,
		MaxConnectionReceiveWindow:       15 << 20,
		KeepAlivePeriod:                  15 * time.Second,
		Versions:                         []quic.Version{quic.Version1},
		EnableDatagrams:                  true,
		EnableStreamResetPartialDelivery: true,
	}
}

// benchRawQUICConn is one raw quic-go connection on 127.0.0.1 whose server
// reads every stream to EOF and answers a 1-byte ack (as
// benchDiscardHandler).
type benchRawQUICConn struct {
	conn *quic.Conn
}

// benchRawQUIC listens with quic-go on 127.0.0.1 (a fresh self-signed ECDSA
// P-256 certificate, TLS 1.3, ALPN "libp2p" like go-libp2p's TLS) and dials
// it; everything is closed and every server goroutine has ended at the end
// of b.
func benchRawQUIC(b *testing.B) *benchRawQUICConn {
	b.Helper()
	cert, err := benchSelfSignedCert()
	if err != nil {
		b.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"libp2p"}, MinVersion: tls.VersionTLS13}
	clientTLS := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"libp2p"}, MinVersion: tls.VersionTLS13}
	ln, err := quic.ListenAddr("127.0.0.1:0", serverTLS, benchQUICConfig())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer func() { _ = c.CloseWithError(0, "") }()
				for {
					s, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						if _, err := io.Copy(io.Discard, s); err != nil {
							s.CancelRead(1)
							s.CancelWrite(1)
							return
						}
						_, _ = s.Write([]byte{1})
						_ = s.Close()
					})
				}
			})
		}
	})
	dctx, dcancel := context.WithTimeout(ctx, benchSetupTimeout)
	defer dcancel()
	conn, err := quic.DialAddr(dctx, ln.Addr().String(), clientTLS, benchQUICConfig())
	if err != nil {
		cancel()
		_ = ln.Close()
		wg.Wait()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = conn.CloseWithError(0, "")
		cancel()
		_ = ln.Close()
		wg.Wait()
	})
	return &benchRawQUICConn{conn: conn}
}

// send opens a stream, sends total bytes by writing chunk over and over,
// closes the write side and waits for the server's 1-byte ack: the op of
// benchSendOnce without libp2p.
func (r *benchRawQUICConn) send(chunk []byte, total int) error {
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	s, err := r.conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := s.SetDeadline(time.Now().Add(benchSetupTimeout)); err != nil {
		return err
	}
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := s.Write(chunk); err != nil {
			s.CancelRead(1)
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := s.Close(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		return fmt.Errorf("read ack: %w", err)
	}
	if ack[0] != 1 {
		return errors.New("bad ack")
	}
	s.CancelRead(0) // as a libp2p stream's Close: the receive side is done
	return nil
}

// benchSelfSignedCert makes a self-signed ECDSA P-256 certificate valid for
// an hour.
func benchSelfSignedCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
