package egress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestSessionCAIsShortLivedAndOnlySignsLeaves(t *testing.T) {
	p, err := NewProxy(Options{SessionID: "sesn_011CZkZ"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pemBytes := p.CACertPEM()
	if strings.Contains(string(pemBytes), "PRIVATE KEY") {
		t.Fatal("CACertPEM holds a private key")
	}
	block, rest := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 {
		t.Fatalf("CACertPEM is not exactly one certificate: %q", pemBytes)
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Subject.CommonName != "Perimeter session sesn_011CZkZ CA" {
		t.Errorf("name = %q", ca.Subject.CommonName)
	}
	if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("CA flags: IsCA %v, basic constraints %v, MaxPathLen %d (zero %v)", ca.IsCA, ca.BasicConstraintsValid, ca.MaxPathLen, ca.MaxPathLenZero)
	}
	if ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("the CA cannot sign certificates")
	}
	if k, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key = %T, want ECDSA P-256", ca.PublicKey)
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); life > DefaultCAValidity+10*time.Minute {
		t.Errorf("valid for %v", life)
	}
	if time.Now().Before(ca.NotBefore) || time.Now().After(ca.NotAfter) {
		t.Errorf("not valid now: %v – %v", ca.NotBefore, ca.NotAfter)
	}
	// A second CA's certificate differs: each session has its own.
	q, _ := NewProxy(Options{SessionID: "sesn_other"})
	defer q.Close()
	if string(q.CACertPEM()) == string(pemBytes) {
		t.Error("two sessions share a CA")
	}
}

func TestLeafForOneHostIsRejectedForAnother(t *testing.T) {
	p, err := NewProxy(Options{SessionID: "s", CAValidity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CACertPEM())
	leaf, err := p.ca.leaf("x.test")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := p.ca.leaf("x.test"); again != leaf {
		t.Error("the leaf was not cached")
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "x.test", Roots: roots}); err != nil {
		t.Fatalf("for x.test: %v", err)
	}
	for _, other := range []string{"y.test", "a.x.test", "test"} {
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: other, Roots: roots}); err == nil {
			t.Errorf("the leaf for x.test verifies for %s", other)
		}
	}
	if leaf.Leaf.IsCA {
		t.Error("the leaf is a CA")
	}
	if leaf.Leaf.NotAfter.After(p.ca.cert.NotAfter) {
		t.Error("the leaf outlives its CA")
	}
	ipLeaf, err := p.ca.leaf("10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ipLeaf.Leaf.Verify(x509.VerifyOptions{DNSName: "10.0.0.5", Roots: roots}); err != nil {
		t.Errorf("for an IP address: %v", err)
	}
	// MaxPathLen 0: an intermediate under the session CA signs nothing
	// that verifies.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Minute),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, p.ca.cert, &key.PublicKey, p.ca.key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(8), DNSNames: []string{"z.test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Minute),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	deepDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, inter, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	deep, _ := x509.ParseCertificate(deepDER)
	inters := x509.NewCertPool()
	inters.AddCert(inter)
	if _, err := deep.Verify(x509.VerifyOptions{DNSName: "z.test", Roots: roots, Intermediates: inters}); err == nil {
		t.Error("a chain through an intermediate verifies")
	}
}
