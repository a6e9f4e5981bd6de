// Bad checkpoints: every malformed case gives a UserError naming the file (and tensor), and
// mutated manifests never crash the reader (a deterministic run of the fuzz target).
#include "parallel/checkpoint.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "runtime/crc32c.h"
#include "runtime/error.h"
#include "tests/fuzz/manifest_fuzz.cpp"

namespace shardtrain::parallel {
namespace {

namespace fs = std::filesystem;

TEST(Crc32c, KnownVector) {
  // The check value of CRC-32C (RFC 3720, appendix B.4): "123456789" -> 0xE3069283.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  // Incremental use gives the same as one call.
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
}

// A one-tensor checkpoint: "w" of shape [2, 3] as two pieces in one file.
class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shardtrain_ckpt_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    float data[6] = {1, 2, 3, 4, 5, 6};
    std::ofstream(dir_ + "/rank_00000.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(data), sizeof data);
    m_.set_format_version(kCheckpointFormatVersion);
    m_.set_step(3);
    auto* t = m_.add_tensors();
    t->set_name("w");
    t->set_state("master");
    t->add_shape(2);
    t->add_shape(3);
    add_piece(t, 0, 0, 2, data);
    add_piece(t, 8, 2, 6, data + 2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void add_piece(proto::CheckpointTensor* t, uint64_t off, uint64_t b, uint64_t e,
                        const float* values) {
    auto* p = t->add_pieces();
    p->set_file("rank_00000.bin");
    p->set_byte_offset(off);
    p->set_begin(b);
    p->set_end(e);
    p->set_crc32c(crc32c(values, (e - b) * 4));
  }
  void write() {
    std::string bytes;
    m_.SerializeToString(&bytes);
    std::ofstream(dir_ + "/manifest.pb", std::ios::binary) << bytes;
  }
  std::string error_of(const std::function<void()>& f) {
    write();
    try {
      f();
    } catch (const UserError& e) {
      return e.what();
    }
    return "<no error>";
  }
  std::string inspect_error() {
    return error_of([&] { inspect_checkpoint(dir_); });
  }

  std::string dir_;
  proto::CheckpointManifest m_;
};

TEST_F(BadCheckpoint, ValidOneInspectsClean) {
  write();
  EXPECT_NE(inspect_checkpoint(dir_).find("every checksum verified"), std::string::npos);
}

TEST_F(BadCheckpoint, MissingManifest) {
  std::string msg = error_of([&] {
    fs::remove(dir_ + "/manifest.pb");
    read_manifest(dir_);
  });
  EXPECT_NE(msg.find("manifest.pb: missing"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, MissingFile) {
  fs::remove(dir_ + "/rank_00000.bin");
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("rank_00000.bin: missing (needed by tensor 'w')"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, TruncatedFile) {
  fs::resize_file(dir_ + "/rank_00000.bin", 20);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("rank_00000.bin: tensor 'w' (master) points past the end of the file"),
            std::string::npos)
      << msg;
}

TEST_F(BadCheckpoint, FlippedByte) {
  std::fstream f(dir_ + "/rank_00000.bin", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(13);
  f.put(char(0x40));
  f.close();
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("rank_00000.bin: checksum mismatch in tensor 'w' (master), elements 2-6"),
            std::string::npos)
      << msg;
}

TEST_F(BadCheckpoint, NewerFormatVersion) {
  m_.set_format_version(kCheckpointFormatVersion + 1);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("format version 2 is not supported"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, OverlappingPieces) {
  m_.mutable_tensors(0)->mutable_pieces(1)->set_begin(1);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("tensor 'w' (master): pieces overlap at element 1"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, GapBetweenPieces) {
  m_.mutable_tensors(0)->mutable_pieces(1)->set_begin(3);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("tensor 'w' (master): elements 2-3 are missing"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, MissingTail) {
  m_.mutable_tensors(0)->mutable_pieces(1)->set_end(5);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("tensor 'w' (master): elements 5-6 are missing"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, PieceBeyondTensor) {
  m_.mutable_tensors(0)->mutable_pieces(1)->set_end(7);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("piece ends past the tensor (7 > 6)"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, PathOutsideTheCheckpoint) {
  m_.mutable_tensors(0)->mutable_pieces(0)->set_file("../../etc/passwd");
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("piece file '../../etc/passwd' is not a plain file name"), std::string::npos)
      << msg;
}

TEST_F(BadCheckpoint, HugeOffsetsDoNotOverflow) {
  m_.mutable_tensors(0)->mutable_pieces(1)->set_byte_offset(~uint64_t(0) - 4);
  std::string msg = inspect_error();
  EXPECT_NE(msg.find("points past the end of the file"), std::string::npos) << msg;
  m_.mutable_tensors(0)->set_shape(0, int64_t(1) << 62);
  msg = inspect_error();
  EXPECT_NE(msg.find("tensor 'w' (master): bad shape"), std::string::npos) << msg;
}

TEST_F(BadCheckpoint, NotAManifest) {
  std::ofstream(dir_ + "/manifest.pb", std::ios::binary) << "\xff\xff\xff garbage";
  std::string msg = "<no error>";
  try {
    read_manifest(dir_);
  } catch (const UserError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("manifest.pb: not a checkpoint manifest"), std::string::npos) << msg;
}

// The fuzz target, run deterministically: 3000 random mutations of a valid manifest (byte
// flips, truncations, insertions). Each read must succeed or throw UserError; a crash or a
// sanitizer report (ASan build) fails the test.
TEST_F(BadCheckpoint, MutatedManifestsNeverCrash) {
  std::string good;
  m_.SerializeToString(&good);
  std::mt19937 rng(2024);
  for (int i = 0; i < 3000; ++i) {
    std::string b = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
        case 0:
          if (!b.empty()) b[rng() % b.size()] = char(rng());
          break;
        case 1:
          b.resize(rng() % (b.size() + 1));
          break;
        case 2:
          b.insert(b.begin() + long(rng() % (b.size() + 1)), char(rng()));
          break;
      }
    }
    testing::read_manifest_bytes(dir_, reinterpret_cast<const uint8_t*>(b.data()), b.size());
  }
}

}  // namespace
}  // namespace shardtrain::parallel
