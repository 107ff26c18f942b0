// tests/support/workspace.hpp — checks of a codec's caller-owned workspace (codec.hpp, Codec
// requirement 8) that every codec declaring workspace_bytes(n) shares.
//
//   expect_small_workspace_refused(codec, g);  // one byte short: invalid_argument, both sizes
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/core/error.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

/// Encodes `in` with a workspace one byte smaller than c.workspace_bytes(in.size()) and
/// expects invalid_argument naming both sizes ("<have> bytes", "is <need>").
template <class C>
void expect_small_workspace_refused(C& c, std::span<const float> in) {
  const std::size_t need = c.workspace_bytes(in.size());
  ASSERT_GT(need, 0u);
  std::vector<std::byte> ws(need - 1), wire(c.max_encoded_bytes(in.size()));
  try {
    c.encode(in, wire, ws);
    ADD_FAILURE() << "a workspace of " << ws.size() << " bytes was accepted";
  } catch (const gradcomm::error& e) {
    EXPECT_EQ(e.code(), gradcomm::make_error_code(gradcomm::errc::invalid_argument));
    const std::string what = e.what();
    EXPECT_NE(what.find(std::to_string(need - 1) + " bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("is " + std::to_string(need)), std::string::npos) << what;
  }
}
